#!/usr/bin/env bash
# Set up .venv and run lint, types and the test suite (fast and integration tiers).
# The integration tier starts its own S3 (SeaweedFS, 127.0.0.1:18333) and a Redis if
# none answers at 127.0.0.1:6379; it uses Redis database 15 and a queue of its own.
# Extra arguments go to pytest, e.g. `bash deploy/local/test.sh -m slow` (the slow tier).
# Plain `pytest` runs only tests/unit (pyproject's testpaths), so this script names `tests`
# unless an argument already names a test path.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash deploy/local/setup.sh
. .venv/bin/activate
echo "== ruff"; ruff check . && ruff format --check .
echo "== mypy"; mypy
named_path=
for arg in "$@"; do
  if [[ "$arg" != -* && -e "${arg%%::*}" ]]; then named_path=1; fi
done
if [ -z "$named_path" ]; then set -- tests "$@"; fi
echo "== pytest $*"
rc=0; pytest "$@" || rc=$?
if [ "$rc" = 5 ]; then
  echo "test.sh: pytest collected no tests for: $*" >&2
fi
exit "$rc"
