#!/usr/bin/env bash
# The test command of the README: install what the tests use, then run the whole suite in
# the project's virtual environment (PYTHON and VENV choose another interpreter; see venv.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# shellcheck source=scripts/venv.sh
. scripts/venv.sh
use_venv test
exec "$PY" -m pytest -q "$@"
