#!/usr/bin/env bash
# The whole command after `upscale tune` vs the built-in fallbacks, fresh processes, interleaved
# (issue 14, Must show 1, our column). Usage:
#   UPSCALE_CACHE=/tmp/tunecache upscale tune -m MODEL --threads 2      # once
#   bash benchmarks/cli_tuned_vs_fallback.sh IMAGE MODEL /tmp/tunecache
# Prints one line per run: which cache, wall seconds, 1-minute load average (lscpu for the CPU).
set -u
IMG=$1; MODEL=$2; TUNED=$3
lscpu | grep -E "Model name|Flags" | cut -c1-200
for run in tuned fallback tuned fallback; do
  if [ "$run" = tuned ]; then C=$TUNED; else C=$(mktemp -d); fi
  s=$(date +%s.%N)
  UPSCALE_CACHE=$C HF_HUB_OFFLINE=1 upscale "$IMG" -s 4 -m "$MODEL" --threads 2 -q --force -o "/tmp/cli_$run.png"
  e=$(date +%s.%N)
  echo "$run $(echo "$e - $s" | bc) s, loadavg $(cut -d' ' -f1 /proc/loadavg)"
  [ "$run" = fallback ] && rm -rf "$C"
done
