#!/bin/bash
# `make train` next to N other CPU-bound jobs (single-thread busy loops), with the 1-minute load average
# sampled every 10 s; prints the wall time and the mean load during the run. Numbers only.
#
#   bash benchmarks/train_under_load.sh [N=2] [WARMUP_S=120] [LATE_S=0] [UNTIL_S=0]   # from the repository root
#
# The busy loops start WARMUP_S seconds before `make train` (so the machine is busy when `ttt` chooses
# its threads), or, with LATE_S > 0, LATE_S seconds after it started (load that arrives mid-run); with
# UNTIL_S > 0 they stop UNTIL_S seconds after the start (load that goes away mid-run).
# Logs go to bench-results/.
set -euo pipefail
N=${1:-2}
WARMUP=${2:-120}
LATE=${3:-0}
UNTIL=${4:-0}
OUT=bench-results
mkdir -p "$OUT"
pids=()  # the busy loops
sampler=()
trap 'kill "${pids[@]}" "${sampler[@]}" 2>/dev/null || true' EXIT
busy() { for _ in $(seq "$N"); do python3 -c "while True: pass" & pids+=($!); done; }
if [ "$LATE" = 0 ]; then busy; sleep "$WARMUP"; fi
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
: > "$OUT/under-load-loadavg.txt"
( while true; do cut -d' ' -f1 /proc/loadavg >> "$OUT/under-load-loadavg.txt"; sleep 10; done ) & sampler+=($!)
start=$(date +%s.%N)
make train > "$OUT/under-load-train.log" 2>&1 &
train=$!
if [ "$LATE" != 0 ]; then sleep "$LATE"; busy; fi
if [ "$UNTIL" != 0 ]; then sleep $((UNTIL - LATE)); kill "${pids[@]}"; pids=(); fi
wait "$train"
end=$(date +%s.%N)
when="with $N busy jobs from $([ "$LATE" = 0 ] && echo "${WARMUP} s before" || echo "${LATE} s after") the start"
if [ "$UNTIL" != 0 ]; then when="$when until ${UNTIL} s after it"; fi
python3 -c "print(f'make train $when: {$end - $start:.1f} s')"
awk '{s += $1; n++} END {printf "mean 1-minute load during the run: %.2f (%d samples)\n", s / n, n}' "$OUT/under-load-loadavg.txt"
