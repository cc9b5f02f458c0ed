#!/usr/bin/env bash
# Create .venv with everything the demo and the tests need (worker, model_build, dev tools).
# Idempotent: a second run only checks. Usage: bash deploy/local/setup.sh [--worker-only]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
VENV=${LCM_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
. "$VENV/bin/activate"
stamp="$VENV/.lcm-setup-$(sha256sum pyproject.toml deploy/local/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  exit 0
fi
# pip configurations with absent local find-links print a warning per package; hide those.
pip() { command pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
pip install -q --upgrade pip
if [ "${1:-}" = "--worker-only" ]; then
  pip install -q -e ".[worker,dev]"
else
  # CPU torch by exact version first: any looser spec may pull a multi-GB CUDA build.
  pip install -q "torch==2.13.0"
  pip install -q -e ".[build,dev]"
  # optimum-intel requires torchvision; the registry's build breaks optimum's import
  # beside CPU torch, so it is installed without its dependencies (listed in [build]).
  pip install -q --no-deps "optimum-intel==2.2.0"
  pip uninstall -q -y torchvision 2>/dev/null || true
fi
# The tests and the demo start a redis-server when none answers on 127.0.0.1:6379.
if ! command -v redis-server >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
fi
# The gallery test drives Debian's chromium with Playwright (no browser download).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi
touch "$stamp"
