"""Small helpers shared by data/, training/ and evaluation/ (no ML here)."""
