#!/usr/bin/env bash
# The test command of the README: install everything, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
exec python3 -m pytest -q "$@"
