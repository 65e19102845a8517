"""Training: config schema, distributed set-up, optimizer and schedules, checkpoints, logging, the loop."""
