#!/usr/bin/env bash
# Nsight Compute reports of NSA's kernels on the lent GPU (issues 5 and 7): scripts/profile_kernels.py's
# workloads under ncu (every section, clocks left alone as the device notes ask), as text in $OUT/ncu_*.txt.
#   bash scripts/gpu_ncu.sh                                  # the default list below
#   WORKLOADS="decode:--B=1" SET=detailed bash scripts/gpu_ncu.sh
# Each entry is workload:args (args joined by commas). Triton's kernels are the ones named _*; the decode
# workload also keeps full attention's cuDNN kernel, the baseline.
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
NCU=${NCU:-$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)}
[ -n "$NCU" ] || { echo "gpu_ncu.sh: no ncu on this machine (PATH or /opt/nvidia/nsight-compute)"; exit 1; }
for entry in ${WORKLOADS:-decode:--B=1 decode:--B=8 forward:--T=65536 backward:--T=32768}; do
  workload=${entry%%:*}
  args=$(echo "${entry#*:}" | tr ',' ' ')
  name=ncu_${workload}$(echo "$args" | tr -d ' =-')
  filter=()
  [ "$workload" != decode ] && filter=(--kernel-name "regex:^_")
  echo "== $workload $args -> $OUT/$name.txt"
  # shellcheck disable=SC2086
  timeout "${RUN_TIMEOUT:-240}" "$NCU" --profile-from-start off --clock-control none --set "${SET:-full}" \
    --print-details all "${filter[@]}" --log-file "$OUT/$name.txt" \
    $PY scripts/profile_kernels.py "$workload" $args 2>&1 | tail -3
  grep -E "^  [_a-zA-Z].*\(|Duration|DRAM Throughput|Registers Per|Achieved Occupancy" "$OUT/$name.txt" | head -60
  # the sections worth committing (speed of light, launch, occupancy, scheduler, warp states, workload
  # distribution) in $name.summary.txt; the whole report (megabytes) gzipped beside it
  awk '/^  [_a-zA-Z].*Context/ {print; keep=0; next}
       /Section: (GPU Speed Of Light Throughput|Launch Statistics|Occupancy|Warp State Statistics|Scheduler Statistics|GPU and Memory Workload Distribution)$/ {keep=1; print; next}
       /Section:/ {keep=0}
       keep && (/OPT|^          |----- ---/ || /^ *$/) {next}
       keep {print}' "$OUT/$name.txt" > "$OUT/$name.summary.txt"
  gzip -f "$OUT/$name.txt"
done
