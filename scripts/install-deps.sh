#!/usr/bin/env bash
# The Debian packages Yuneta for Python's tests talk to for real, installed when running as
# root (as a user, says what is missing). `--bench` adds what the benchmark compares against.
#   tests: openssl, certbot + pebble (ACME), promtool (alert rules), sudo + systemd-analyze
#          (the install layer), python3-venv
#   bench: nginx with its stream module
# The Python side lives in the project's virtual environment (scripts/venv.sh).
set -euo pipefail

has() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/bin/$1" ] || [ -x "/usr/sbin/$1" ]; }
need=()
has openssl || need+=(openssl)
has certbot || need+=(certbot)
has pebble || need+=(pebble)
has promtool || need+=(prometheus)
has sudo || need+=(sudo)
has systemd-analyze || need+=(systemd)
# Debian's python3 cannot create a virtual environment without python3-venv (ensurepip).
py="${PYTHON:-python3}"
if command -v "$py" >/dev/null 2>&1 && ! "$py" -c 'import ensurepip, venv' 2>/dev/null; then
    need+=(python3-venv)
fi
if [ "${1:-}" = "--bench" ]; then
    has nginx || need+=(nginx-light libnginx-mod-stream)
fi
[ "${#need[@]}" -eq 0 ] && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian packages: ${need[*]}"
    apt-get update -q >/dev/null || echo "warning: apt-get update failed" >&2
    install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null; }
    # One package that cannot install (a container without systemd's needs...) must not cost
    # the others: retry one by one and name what failed.
    if ! install "${need[@]}"; then
        for pkg in "${need[@]}"; do
            install "$pkg" || echo "warning: could not install $pkg (its tests will be skipped)" >&2
        done
    fi
else
    echo "note: not root, so not installing: ${need[*]} (tests that need them are skipped)" >&2
fi
