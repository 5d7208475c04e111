#!/usr/bin/env bash
# The test command of the README: install what the tests use, then run the whole suite in
# the project's virtual environment (PYTHON and VENV choose another interpreter; see venv.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# shellcheck source=scripts/venv.sh
. scripts/venv.sh
use_venv test
# sslyze (tests/test_ciphers_sslyze.py) pins cryptography<47, which this package's pyOpenSSL
# refuses: it gets a virtual environment of its own, named to the tests by YUNETA_SSLYZE.
if [ -z "${YUNETA_SSLYZE:-}" ]; then
    sslyze_venv="${SSLYZE_VENV:-.venv-sslyze}"
    if [ ! -x "$sslyze_venv/bin/sslyze" ]; then
        echo "installing sslyze into $sslyze_venv"
        python3 -m venv --clear "$sslyze_venv"  # any python3: sslyze runs as a separate program
        "$sslyze_venv/bin/pip" install -q --disable-pip-version-check sslyze
    fi
    export YUNETA_SSLYZE="$PWD/$sslyze_venv/bin/sslyze"
fi
exec "$PY" -m pytest -q "$@"
