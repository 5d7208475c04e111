#!/usr/bin/env bash
# Install what Yuneta for Python needs on a fresh Debian machine: the tools the tests talk
# to for real (openssl, certbot, pebble, nginx's stream module for the benchmark baseline)
# when running as root, and the Python package with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    need=()
    command -v openssl >/dev/null || need+=(openssl)
    command -v certbot >/dev/null || need+=(certbot)
    command -v pebble >/dev/null || [ -x /usr/bin/pebble ] || need+=(pebble)
    command -v nginx >/dev/null || need+=(nginx-light libnginx-mod-stream)
    if [ "${#need[@]}" -gt 0 ]; then
        echo "installing Debian packages: ${need[*]}"
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
    fi
fi

python3 -m pip install -q --disable-pip-version-check -e ".[test]"
