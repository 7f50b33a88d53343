#!/usr/bin/env bash
# --precision auto with nothing tuned (the machine's one-convolution probe decides) vs --precision bf16
# (what auto ran before the probe), whole command, same image; a first auto run with an empty cache
# (it probes), then bf16, then auto again (cached answer). Output: docs/perf/issue14_xeon_noamx_precision/untuned_probe.txt
#   bash benchmarks/untuned_precision.sh IMG X4PLUS.safetensors     # with the project's venv active
set -u
IMG=${1:?usage: bash $0 IMG X4PLUS.safetensors}
for m in "${2:?usage: bash $0 IMG X4PLUS.safetensors}" default-x4; do
  for mode in auto bf16 auto2; do
    p=$mode; [ $mode = auto2 ] && p=auto
    [ $mode = auto ] && rm -rf /tmp/c_untuned_$(basename $m)
    s=$(date +%s.%N)
    UPSCALE_CACHE=/tmp/c_untuned_$(basename $m) HF_HUB_OFFLINE=1 upscale $IMG -s 4 -m $m -o /tmp/untuned_$mode.png --force --threads 2 --precision $p -v 2>&1 | grep -i "precision auto\|engine\|no tuning" | head -3
    e=$(date +%s.%N)
    echo "$m precision=$mode ($p) wall $(awk "BEGIN {printf \"%.1f\", $e - $s}") s"
  done
done
