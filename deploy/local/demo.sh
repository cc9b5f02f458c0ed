#!/usr/bin/env bash
# The offline demo, end to end on real parts:
#   set up .venv -> take the reference LCM shipped in model_build/reference/weights (trained
#   offline by `lcm-build reference`) -> export to OpenVINO IR -> NNCF INT8 UNet and quality
#   gate (image figures and prompt adherence) -> start Redis (if none answers) and S3
#   (SeaweedFS) -> publish the artifact -> start one worker that pulls it by name@latest ->
#   submit jobs -> download the PNGs -> score how well they follow their prompts -> start
#   the HTTP API (lcm-api), create an API key, submit one job over HTTP as a client would,
#   follow it to its PNG, and print its gallery link.
# Usage: bash deploy/local/demo.sh     (LCM_DEMO_KEEP=1 leaves worker, API and S3 running)
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

REFERENCE=model_build/reference/weights
ARTIFACT=$MODELS/reference-int8
# Reuse an artifact only if it is intact and passed this lcm-fleet's quality gate.
if lcm-build verify "$ARTIFACT" >/dev/null 2>&1 && python -c "import json, sys; \
    sys.exit(not (json.load(open('$ARTIFACT/manifest.json')).get('quality') or {}).get('passed'))"; then
  say "INT8 artifact $ARTIFACT exists and matches its manifest; reusing it"
else
  rm -rf "$ARTIFACT" "$ARTIFACT.fp32"
  say "exporting the reference LCM ($REFERENCE) to OpenVINO IR and quantizing the UNet to INT8"
  lcm-build build "$REFERENCE" "$ARTIFACT" --samples 200
fi

say "publishing the artifact to S3 (its version is a content hash; 'latest' moves last)"
lcm-build publish "$ARTIFACT" reference --no-progress
lcm-build list reference

# The worker pulls reference@latest into its cache and checks every sha256 before it serves.
export LCM_MODEL=reference@latest
export LCM_MODEL_CACHE_DIR=$ROOT/var/model-cache
export LCM_CACHE_DIR=$ROOT/var/ov-cache
export LCM_QUEUE=lcm.demo
WORKER_LOG=$DEMO/worker.log
say "starting one worker (log: $WORKER_LOG)"
lcm-worker >"$WORKER_LOG" 2>&1 &
WORKER_PID=$!
API_PID=
cleanup() {
  status=$?
  # LCM_DEMO_KEEP=1 after a successful run: the worker, the API and S3 keep serving.
  if [ "${LCM_DEMO_KEEP:-0}" = 1 ] && [ "$status" = 0 ]; then
    echo "still running: worker pid $WORKER_PID, lcm-api pid ${API_PID:-none} (kill them when done)"
    return
  fi
  [ -n "$API_PID" ] && kill -TERM "$API_PID" 2>/dev/null && wait "$API_PID" 2>/dev/null || true
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
rm -rf "$OUT"
say "submitting jobs (each waits for its result, then downloads the PNGs to $OUT)"
lcm submit "a red circle on a blue background" --seed 1 --wait --download "$OUT"
lcm submit "a yellow triangle on a purple background" --seed 2 --num-images 2 --wait --download "$OUT"
lcm submit "a white cross on a green background" --seed 3 --wait --download "$OUT"
# Combinations the model never saw in training (model_build/reference/weights/reference.json):
lcm submit "a cyan diamond on a purple background" --seed 4 --wait --download "$OUT"
lcm submit "a green cross on a yellow background" --seed 5 --steps 2 --wait --download "$OUT"

say "an invalid job is refused at submit:"
lcm submit "too many steps" --steps 12 || true

say "how well the PNGs follow their prompts (model_build.reference.scorer reads shape and colours back):"
lcm-build reference-score "$OUT"

# The HTTP API on the same records and queue. The pepper hashes the API keys: keep it.
API_PORT=${LCM_DEMO_API_PORT:-18080}
API=http://127.0.0.1:$API_PORT
[ -s "$DEMO/api-pepper" ] || python -c "import secrets; print(secrets.token_hex(32))" >"$DEMO/api-pepper"
export LCM_API_KEY_PEPPER=$(cat "$DEMO/api-pepper")
export LCM_API_PUBLIC_URL=$API
say "starting the HTTP API on $API (log: $DEMO/api.log) and creating an API key"
lcm-api serve --port "$API_PORT" >"$DEMO/api.log" 2>&1 &
API_PID=$!
KEY=$(lcm-api keys create demo --quiet)
for _ in $(seq 1 60); do
  curl -sf "$API/healthz" >/dev/null && break
  kill -0 "$API_PID" 2>/dev/null || { cat "$DEMO/api.log"; echo "lcm-api exited" >&2; exit 1; }
  sleep 0.5
done
say "a client submits a job over HTTP: POST $API/v1/jobs"
BODY='{"prompt": "a blue square on a red background", "seed": 6, "num_images": 2}'
JOB=$(curl -sf -X POST "$API/v1/jobs" -H "Authorization: Bearer $KEY" \
      -H "Content-Type: application/json" -d "$BODY" | python -c "import json, sys; print(json.load(sys.stdin)['id'])")
echo "job $JOB accepted; following it:"
STATE=
for _ in $(seq 1 240); do
  STATE=$(curl -sf "$API/v1/jobs/$JOB" -H "Authorization: Bearer $KEY" \
          | python -c "import json, sys; print(json.load(sys.stdin)['state'])")
  case "$STATE" in succeeded|failed|canceled) break ;; esac
  sleep 0.5
done
echo "job $JOB: $STATE"
[ "$STATE" = succeeded ] || { tail -20 "$DEMO/api.log"; exit 1; }
curl -sf "$API/v1/jobs/$JOB/images/0" -H "Authorization: Bearer $KEY" -o "$OUT/api-$JOB-000.png"
echo "its first PNG, streamed through the API: $ROOT/$OUT/api-$JOB-000.png"
GALLERY=$(curl -sf -X POST "$API/v1/jobs/$JOB/gallery-link" -H "Authorization: Bearer $KEY" \
          | python -c "import json, sys; print(json.load(sys.stdin)['url'])")
case "$GALLERY" in http*) ;; *) GALLERY=$API$GALLERY ;; esac

say "done"
echo "PNGs (with prompt, seed and model hash in their text chunks): $ROOT/$OUT"
ls -1 "$OUT"
echo "worker log: $ROOT/$WORKER_LOG"
echo "quality report of the INT8 artifact: $ROOT/$ARTIFACT/quality.json (contact_sheet.png beside it)"
echo "the HTTP API: $API/docs (key: in this shell's history only; make another with lcm-api keys create)"
echo "gallery of the HTTP job (a signed link, valid LCM_GALLERY_LINK_EXPIRES_S, an hour): $GALLERY"
if [ "${LCM_DEMO_KEEP:-0}" != 1 ]; then
  echo "(the API stops with the demo; LCM_DEMO_KEEP=1 keeps it, the worker and S3 running)"
fi
