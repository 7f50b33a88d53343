#!/usr/bin/env bash
# The card's usages (README top), typed exactly, in a scratch folder holding only what they name.
# Prints each command, its output, exit code and wall time. Offline: HF_HUB_OFFLINE is left unset for
# the -m esrgan line and the Hub endpoint points at a name that never resolves, as for a user without
# network. Usage: scripts/card_usages.sh   (with the project's venv active, or UPSCALE="python -m upscale")
set -u
UPSCALE=${UPSCALE:-upscale}
work=$(mktemp -d "${TMPDIR:-/tmp}/card_usages.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
export UPSCALE_CACHE="$work/.env/cache" HF_HOME="$work/.env/hf" UPSCALE_CONFIG_DIR="$work/.env/config"
export XDG_CACHE_HOME="$work/.env/xdg" HF_HUB_DISABLE_TELEMETRY=1

python - <<'PY'
import numpy as np
from pathlib import Path
from PIL import Image
rng = np.random.default_rng(0)
def noise(n): return Image.fromarray(rng.integers(0, 256, (n, n, 3), dtype=np.uint8))
def waves(n, seed):
    r = np.random.default_rng(seed); y, x = np.mgrid[0:n, 0:n].astype(float)
    img = sum(np.sin(r.uniform(0.4, 1.2) * (x * np.cos(a) + y * np.sin(a))) for a in r.uniform(0, np.pi, 3))
    return Image.fromarray((127.5 + 42 * img[..., None] * np.ones(3)).round().clip(0, 255).astype(np.uint8))
noise(48).save("photo.jpg", quality=92)
for d in ("dir", "div2k", "Set5"): Path(d).mkdir()
noise(32).save("dir/a.png"); noise(40).save("dir/b.jpg", quality=92)
for i in range(4): waves(160, i).save(f"div2k/{i:04d}.png")
for i in range(2): waves(64, 10 + i).save(f"Set5/img{i}.png")
PY

typed() {  # typed [ENV=VALUE ...] -- upscale ARGS...
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift; shift  # "--" and the word "upscale"
  echo "\$ upscale $*"
  local t0=$SECONDS
  env "${envs[@]}" $UPSCALE "$@" 2>&1
  echo "[exit $?, $((SECONDS - t0)) s]"
  echo
}

# -m esrgan first: it writes nothing offline, so the default line after it is not refused as "exists already"
typed HF_ENDPOINT=http://hub.invalid -- upscale photo.jpg -s 4 -m esrgan
typed HF_HUB_OFFLINE=1 -- upscale photo.jpg -s 4
typed HF_HUB_OFFLINE=1 -- upscale batch dir/ --out hi/
typed HF_HUB_OFFLINE=1 -- upscale interp --alpha 0.8
typed HF_HUB_OFFLINE=1 -- upscale bench --data Set5/ -s 4

echo "\$ upscale train --data div2k/     (SIGINT once it has printed its first lines)"
t0=$SECONDS
HF_HUB_OFFLINE=1 $UPSCALE train --data div2k/ >train.log 2>&1 &
pid=$!
for _ in $(seq 1 600); do
  grep -q -- "--resume" train.log 2>/dev/null && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
sleep 1
kill -INT "$pid" 2>/dev/null
wait "$pid"
code=$?
cat train.log
echo "[exit $code, $((SECONDS - t0)) s]"
ls -d runs/* 2>/dev/null && find runs -name '*.pt' | head -3
