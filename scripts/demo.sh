#!/usr/bin/env bash
# The main job: an agent and a TLS echo yuno on generated certificates, driven by ycommand.
# No root needed; everything lives under ./demo-run. `--once` runs the demonstration and exits.
# Ctrl-C, SIGTERM or an error stop everything it started. DEMO_RUN, DEMO_AGENT_PORT, DEMO_PORT
# and DEMO_METRICS_PORT move it elsewhere; PYTHON and VENV pick the interpreter (scripts/venv.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ONCE=0; [ "${1:-}" = "--once" ] && ONCE=1
RUN="${DEMO_RUN:-demo-run}"; AGENT_PORT="${DEMO_AGENT_PORT:-1991}"; PORT="${DEMO_PORT:-7443}"
METRICS_PORT="${DEMO_METRICS_PORT:-1992}"
AGENT_URL="ws://127.0.0.1:$AGENT_PORT"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
yc() { echo "\$ ycommand -c '$*'"; "$PY" -m yuneta.ycommand -u "$AGENT_URL" -c "$*" || true; }

# Everything the agent starts inherits this mark, so the cleanup finds the yunos even when the
# agent is gone (they run in their own sessions: a terminal's Ctrl-C never reaches them).
DEMO_ID="demo-$$-$RANDOM"
AGENT_PID=""; CLIENT=""
marked_pids() {
    local f pid
    for f in /proc/[0-9]*/environ; do
        pid="${f#/proc/}"; pid="${pid%/environ}"
        grep -qzxF "YUNETA_DEMO_ID=$DEMO_ID" "$f" 2>/dev/null && echo "$pid"
    done
    return 0
}
cleanup() {
    local code=$? pids
    set +e
    trap '' INT TERM HUP  # a second Ctrl-C or a TERM must not cut the cleanup short
    [ -n "$CLIENT" ] && kill "$CLIENT" 2>/dev/null
    if [ -n "$AGENT_PID" ] && kill -0 "$AGENT_PID" 2>/dev/null; then
        "$PY" -m yuneta.ycommand -u "$AGENT_URL" -w 5 -c "kill-yuno yuno_role=echo_tls" >/dev/null 2>&1 || true
        kill "$AGENT_PID" 2>/dev/null || true
    fi
    pids="$(marked_pids)"
    [ -n "$pids" ] && kill $pids 2>/dev/null
    for _ in $(seq 50); do
        pids="$(marked_pids)"; [ -z "$pids" ] && break; sleep 0.1
    done
    [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
    wait 2>/dev/null
    exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# shellcheck source=scripts/venv.sh
. scripts/venv.sh
use_venv ""
for port in "$AGENT_PORT" "$PORT" "$METRICS_PORT"; do
    if "$PY" -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1',$port))!=0)"; then
        echo "port $port is busy on 127.0.0.1: stop what uses it (an earlier demo?) and retry" >&2; exit 1
    fi
done

mkdir -p "$RUN"
RUN="$(cd "$RUN" && pwd)"; STORE="$RUN/store/certs"
"$PY" - "$RUN" "$AGENT_URL" "$PORT" "$STORE" "$METRICS_PORT" <<'PYEOF'
import json, sys
run, agent_url, port, store, metrics_port = sys.argv[1:]
def write(name, variables):
    with open(f"{run}/{name}", "w") as f:
        json.dump({"__json_config_variables__": variables}, f, indent=2)
write("agent-override.json", {
    "agent_url": agent_url,
    "work_dir": f"{run}/agent",
    "cert_sync_store_dir": store,  # layer 2: the agent watches this store
    "metrics_port": int(metrics_port),
})
write("echo-override.json", {
    "url": f"tcps://127.0.0.1:{port}",
    "ssl_certificate": f"{store}/localhost.crt",
    "ssl_certificate_key": f"{store}/private/localhost.key",
    "work_dir": f"{run}/echo1",
})
PYEOF

say "1. a private CA and a certificate for localhost in the store ($STORE)"
"$PY" scripts/make-certs.py --store "$STORE" --name localhost --days 90

say "2. the agent (yuneta run -f configs/agent.json) on $AGENT_URL; log: $RUN/agent.log"
YUNETA_DEMO_ID="$DEMO_ID" setsid "$PY" -m yuneta run -f configs/agent.json -f "$RUN/agent-override.json" \
    >"$RUN/agent.log" 2>&1 </dev/null &
AGENT_PID=$!
for _ in $(seq 100); do "$PY" -m yuneta.ycommand -u "$AGENT_URL" -w 1 -c help >/dev/null 2>&1 && break; sleep 0.1; done

say "3. the agent launches a TLS echo yuno (configs/echo-tls.json: tcps://127.0.0.1:$PORT)"
yc "run-yuno config=configs/echo-tls.json,$RUN/echo-override.json"
yc "list-yunos"

say "4. the certificate every listener serves"
yc "command-yuno command=view-cert service=__yuno__"
"$PY" scripts/demo-client.py probe "$PORT" "$STORE/ca.crt"

say "5. the certificate is renewed in the store; the agent's watch reloads it, no command sent"
"$PY" scripts/demo-client.py hold "$PORT" "$STORE/ca.crt" 4 &
CLIENT=$!
sleep 1
OLD_SERIAL="$("$PY" scripts/demo-client.py probe "$PORT" "$STORE/ca.crt" | sed -n 's/^serial=\([0-9A-F]*\).*/\1/p')"
"$PY" scripts/make-certs.py --store "$STORE" --name localhost --days 90
"$PY" scripts/demo-client.py until-new "$PORT" "$STORE/ca.crt" "$OLD_SERIAL" 15 || true
wait "$CLIENT"; CLIENT=""
yc "cert-sync-status"

say "6. a broken key lands in the store: refused, the good certificate keeps serving, the status says why"
cp "$STORE/private/localhost.key" "$RUN/good.key"
"$PY" -c "
from cryptography.hazmat.primitives.asymmetric import ec; from cryptography.hazmat.primitives import serialization as s
open('$STORE/private/localhost.key','wb').write(ec.generate_private_key(ec.SECP256R1()).private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()))"
sleep 6  # the agent retries a key that does not match for a few seconds (certbot's links move one at a time)
yc "cert-sync-status"
"$PY" scripts/demo-client.py probe "$PORT" "$STORE/ca.crt"
cp "$RUN/good.key" "$STORE/private/localhost.key"

say "7. expiry status (the monitor logs warning/critical by itself every timeout_cert_check seconds)"
yc "command-yuno command=cert-expiry-status service=__yuno__"

if [ "$ONCE" = 1 ]; then
    say "done (--once)"
    exit 0
fi
say "running: agent on $AGENT_URL, echo on tcps://127.0.0.1:$PORT. Try: ycommand -u $AGENT_URL -c list-yunos. Ctrl-C stops."
wait "$AGENT_PID" || true
echo "the agent stopped (see $RUN/agent.log)" >&2
