#!/usr/bin/env bash
# The test command (README and CI): environment + build + the whole test suite.
#
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/env.sh
VENV=${DSFD_VENV:-.venv}
set +e
"$VENV/bin/python" -m pytest -q -rs "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
