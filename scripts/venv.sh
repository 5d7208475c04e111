# Sourced by demo.sh and test.sh: a project virtual environment, so the scripts work with
# Debian's externally managed /usr/bin/python3 as well as with any other Python 3.11+.
#   PYTHON  the interpreter that creates the environment (default: python3 on PATH)
#   VENV    where it lives (default: .venv in the repository; if PYTHON already runs inside
#           a virtual environment and VENV is unset, that one is used as it is)
# Sets PY to the environment's interpreter, with the package (and $1's extras) installed.
# shellcheck shell=bash

use_venv() {
    local extras="${1:-}" base="${PYTHON:-python3}"
    if ! command -v "$base" >/dev/null 2>&1; then
        echo "error: PYTHON=$base: no such interpreter (install python3, or set PYTHON)" >&2
        return 2
    fi
    if [ -z "${VENV:-}" ] && "$base" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
        VENV="$("$base" -c 'import sys; print(sys.prefix)')"
    fi
    VENV="${VENV:-.venv}"
    local want have=""
    want="$("$base" -c 'import sys; print(sys.version.split()[0])')"
    [ -x "$VENV/bin/python" ] && have="$("$VENV/bin/python" -c 'import sys; print(sys.version.split()[0])' 2>/dev/null || true)"
    if [ "$have" != "$want" ]; then
        echo "creating the virtual environment $VENV (Python $want)"
        if ! "$base" -m venv --clear "$VENV"; then
            echo "error: '$base -m venv' failed: on Debian install python3-venv (apt-get install python3-venv)" >&2
            return 2
        fi
    fi
    PY="$VENV/bin/python"
    # Reinstall only when pyproject.toml changed or the package resolves elsewhere.
    local hash stamp
    hash="$(sha256sum pyproject.toml | cut -c1-16)"
    stamp="$VENV/.yuneta-$hash-${extras:-base}"
    # Any install of this pyproject.toml serves a caller that needs no extras.
    [ -z "$extras" ] && compgen -G "$VENV/.yuneta-$hash-*" >/dev/null && stamp="$(compgen -G "$VENV/.yuneta-$hash-*" | head -1)"
    if [ ! -e "$stamp" ] || ! "$PY" -c "import sys, yuneta; sys.exit(not yuneta.__file__.startswith('$PWD/'))" 2>/dev/null; then
        echo "installing the package into $VENV (pip install -e .${extras:+[$extras]})"
        "$PY" -m pip install -q --disable-pip-version-check -e ".${extras:+[$extras]}"
        touch "$stamp"
    fi
}
