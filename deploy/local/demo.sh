#!/usr/bin/env bash
# The offline demo, end to end on real parts:
#   set up .venv -> build the tiny LCM -> export to OpenVINO IR -> NNCF INT8 UNet and quality
#   gate -> start Redis (if none answers) and S3 (SeaweedFS) -> publish the artifact ->
#   start one worker that pulls it by name@latest ->
#   submit jobs -> print where the PNGs are, with per-stage timings.
# Usage: bash deploy/local/demo.sh     (LCM_DEMO_KEEP=1 leaves worker and S3 running)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
bash deploy/local/setup.sh
. .venv/bin/activate

DEMO=var/demo
MODELS=var/models
mkdir -p "$DEMO" "$MODELS"
say() { printf '\n== %s\n' "$*"; }

say "starting local services (Redis on 127.0.0.1:6379 if none answers, S3 on 127.0.0.1:8333)"
eval "$(python deploy/local/services.py start)"

ARTIFACT=$MODELS/tiny-int8
# Reuse an artifact only if it is intact and passed this lcm-fleet's quality gate.
if lcm-build verify "$ARTIFACT" >/dev/null 2>&1 && python -c "import json, sys; \
    sys.exit(not (json.load(open('$ARTIFACT/manifest.json')).get('quality') or {}).get('passed'))"; then
  say "INT8 artifact $ARTIFACT exists and matches its manifest; reusing it"
else
  rm -rf "$MODELS/tiny" "$ARTIFACT" "$ARTIFACT.fp32"
  say "building the tiny LCM offline ($MODELS/tiny)"
  lcm-build tiny "$MODELS/tiny"
  say "exporting to OpenVINO IR and quantizing the UNet to INT8 with NNCF"
  lcm-build build "$MODELS/tiny" "$ARTIFACT" --samples 200
fi

say "publishing the artifact to S3 (its version is a content hash; 'latest' moves last)"
lcm-build publish "$ARTIFACT" tiny --no-progress
lcm-build list tiny

# The worker pulls tiny@latest into its cache and checks every sha256 before it serves.
export LCM_MODEL=tiny@latest
export LCM_MODEL_CACHE_DIR=$ROOT/var/model-cache
export LCM_CACHE_DIR=$ROOT/var/ov-cache
export LCM_QUEUE=lcm.demo
WORKER_LOG=$DEMO/worker.log
say "starting one worker (log: $WORKER_LOG)"
lcm-worker >"$WORKER_LOG" 2>&1 &
WORKER_PID=$!
cleanup() {
  kill -TERM "$WORKER_PID" 2>/dev/null && wait "$WORKER_PID" 2>/dev/null || true
  if [ "${LCM_DEMO_KEEP:-0}" != 1 ]; then
    python deploy/local/services.py stop >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
for _ in $(seq 1 180); do
  grep -q " ready." "$WORKER_LOG" 2>/dev/null && break
  kill -0 "$WORKER_PID" 2>/dev/null || { cat "$WORKER_LOG"; echo "the worker exited" >&2; exit 1; }
  sleep 0.5
done
grep -q " ready." "$WORKER_LOG" || { tail -30 "$WORKER_LOG"; echo "the worker did not become ready" >&2; exit 1; }

OUT=$DEMO/images
say "submitting jobs (each waits for its result, then downloads the PNGs to $OUT)"
lcm submit "a lighthouse on a rocky coast at dusk" --seed 1 --wait --download "$OUT"
lcm submit "a bowl of ramen, food photography" --seed 2 --num-images 2 --wait --download "$OUT"
lcm submit "a red fox in fresh snow, telephoto" --seed 3 --steps 2 --wait --download "$OUT"

say "an invalid job is refused at submit:"
lcm submit "too many steps" --steps 12 || true

say "done"
echo "PNGs (with prompt, seed and model hash in their text chunks): $ROOT/$OUT"
ls -1 "$OUT"
echo "worker log: $ROOT/$WORKER_LOG"
echo "The tiny model has random weights, so the images are coloured noise: the point is the path."
