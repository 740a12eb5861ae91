#!/bin/bash
# `make train` next to N other CPU-bound jobs (single-thread busy loops), with the load average sampled
# every 10 s; prints the wall time and the mean 1-minute load during the run. Numbers only.
#
#   bash benchmarks/train_under_load.sh [N=2] [WARMUP_S=120]   # from the repository root
#
# The busy loops start WARMUP_S seconds early so that the 1-minute load average (what `ttt` reads to
# choose its threads) already shows them. Logs go to bench-results/.
set -euo pipefail
N=${1:-2}
WARMUP=${2:-120}
OUT=bench-results
mkdir -p "$OUT"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
for _ in $(seq "$N"); do python3 -c "while True: pass" & pids+=($!); done
sleep "$WARMUP"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
: > "$OUT/under-load-loadavg.txt"
( while true; do cut -d' ' -f1 /proc/loadavg >> "$OUT/under-load-loadavg.txt"; sleep 10; done ) & pids+=($!)
start=$(date +%s.%N)
make train > "$OUT/under-load-train.log" 2>&1
end=$(date +%s.%N)
python3 -c "print(f'make train next to $N busy jobs: {$end - $start:.1f} s')"
awk '{s += $1; n++} END {printf "mean 1-minute load during the run: %.2f (%d samples)\n", s / n, n}' "$OUT/under-load-loadavg.txt"
