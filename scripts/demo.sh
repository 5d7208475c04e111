#!/usr/bin/env bash
# The main job: an agent and a TLS echo yuno on generated certificates, driven by ycommand.
# No root needed; everything lives under ./demo-run. `--once` runs the demonstration and exits.
set -euo pipefail
cd "$(dirname "$0")/.."
ONCE=0; [ "${1:-}" = "--once" ] && ONCE=1
RUN=demo-run; STORE=$RUN/store/certs; AGENT_URL=ws://127.0.0.1:1991; PORT=7443

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
yc() { echo "\$ ycommand -c '$*'"; python3 -m yuneta.ycommand -u "$AGENT_URL" -c "$*" || true; }

python3 -c 'import yuneta, pykka, websockets' 2>/dev/null || {
    say "installing the package (pip install -e .)"
    python3 -m pip install -q --disable-pip-version-check -e .
}
for port in 1991 $PORT; do
    if python3 -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1',$port))!=0)"; then
        echo "port $port is busy on 127.0.0.1: stop what uses it (an earlier demo?) and retry" >&2; exit 1
    fi
done

mkdir -p "$RUN"
say "1. a private CA and a certificate for localhost in the store ($STORE)"
python3 scripts/make-certs.py --store "$STORE" --name localhost --days 90

say "2. the agent (yuneta run -f configs/agent.json) on $AGENT_URL; log: $RUN/agent.log"
python3 -m yuneta run -f configs/agent.json >"$RUN/agent.log" 2>&1 &
AGENT_PID=$!
cleanup() {
    python3 -m yuneta.ycommand -u "$AGENT_URL" -c "kill-yuno yuno_role=echo_tls" >/dev/null 2>&1 || true
    kill "$AGENT_PID" 2>/dev/null || true
    wait "$AGENT_PID" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 100); do python3 -m yuneta.ycommand -u "$AGENT_URL" -w 1 -c help >/dev/null 2>&1 && break; sleep 0.1; done

say "3. the agent launches a TLS echo yuno (configs/echo-tls.json: tcps://127.0.0.1:$PORT)"
yc "run-yuno config=configs/echo-tls.json"
yc "list-yunos"

say "4. the certificate every listener serves"
yc "command-yuno command=view-cert service=__yuno__"
python3 scripts/demo-client.py probe $PORT "$STORE/ca.crt"

say "5. a live session keeps echoing while the certificate is renewed and reloaded"
python3 scripts/demo-client.py hold $PORT "$STORE/ca.crt" 4 &
CLIENT=$!
sleep 1
python3 scripts/make-certs.py --store "$STORE" --name localhost --days 90
yc "command-yuno command=reload-certs service=__yuno__"
echo "a new session now sees the new certificate:"
python3 scripts/demo-client.py probe $PORT "$STORE/ca.crt"
wait $CLIENT

say "6. a broken key is refused and the good certificate keeps serving"
cp "$STORE/private/localhost.key" "$RUN/good.key"
python3 -c "
from cryptography.hazmat.primitives.asymmetric import ec; from cryptography.hazmat.primitives import serialization as s
open('$STORE/private/localhost.key','wb').write(ec.generate_private_key(ec.SECP256R1()).private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()))"
yc "command-yuno command=reload-certs service=__yuno__"
python3 scripts/demo-client.py probe $PORT "$STORE/ca.crt"
cp "$RUN/good.key" "$STORE/private/localhost.key"

say "7. expiry status (the monitor logs warning/critical by itself every timeout_cert_check seconds)"
yc "command-yuno command=cert-expiry-status service=__yuno__"

if [ "$ONCE" = 1 ]; then
    say "done (--once)"
    exit 0
fi
say "running: agent on $AGENT_URL, echo on tcps://127.0.0.1:$PORT. Try: ycommand -c list-yunos. Ctrl-C stops."
wait "$AGENT_PID"
