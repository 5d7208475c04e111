#!/bin/bash
# reload-certs: the certbot deploy hook of a Yuneta host (layer 1, the fast path).
#
# certbot runs it as root after every successful issue or renewal, from
# /etc/letsencrypt/renewal-hooks/deploy/ (on `renew`) or from --deploy-hook (on both `certonly`
# and `renew`), with RENEWED_LINEAGE and RENEWED_DOMAINS set. Steps, each independent (no
# `set -e`: a broken yuno must not stop the stamp or the other steps), each logged with its result:
#   1. copy: copy-certs.sh mirrors certbot's lineages into the store;
#   2. web-reload: reloads a web server, only when YUNETA_WEB_RELOAD names one;
#   3. reload-yunos: `ycommand -c 'command-yuno command=reload-certs service=__yuno__'`, as the
#      yuneta user when run as root; if it fails the agent's own sync (layer 2) still delivers
#      the new certificate, so this says so and goes on;
#   4. stamp: always writes the time (Unix seconds) that the agent's `cert-sync-status` reports
#      as deploy_hook_last_run: a stale stamp is how an operator learns the hook stopped firing.
# Everything goes to the hook log. Exit status 0 when every step succeeded, 1 otherwise (certbot
# logs it and carries on). Commands are argument lists, never evaluated.
#
# Configuration (environment, with the defaults `yuneta install` writes in):
#   YUNETA_PREFIX        root of every path below
#   YUNETA_COPY_CERTS    the copy script (default $YUNETA_PREFIX/yuneta/store/certs/copy-certs.sh)
#   YUNETA_HOOK_LOG      (default $YUNETA_PREFIX/var/log/yuneta/deploy-hook.log)
#   YUNETA_HOOK_LOG_MAX  bytes; a longer log becomes <log>.1 (the one old log kept) before a run
#                        starts writing (default 1048576)
#   YUNETA_HOOK_STAMP    (default $YUNETA_PREFIX/var/lib/yuneta/last-deploy-hook-run)
#   YUNETA_WEB_RELOAD    e.g. "nginx -s reload": words split on blanks, no quoting or expansion
#   YUNETA_YCOMMAND      the ycommand executable
#   YUNETA_AGENT_URL     the agent (default ws://127.0.0.1:1991)
#   YUNETA_USER          who runs ycommand when the hook is root (default yuneta; empty: root)
set -u
umask 022

prefix="${YUNETA_PREFIX-}"
copy_certs="${YUNETA_COPY_CERTS:-$prefix/yuneta/store/certs/copy-certs.sh}"
hook_log="${YUNETA_HOOK_LOG:-$prefix/var/log/yuneta/deploy-hook.log}"
hook_log_max="${YUNETA_HOOK_LOG_MAX:-1048576}"
stamp="${YUNETA_HOOK_STAMP:-$prefix/var/lib/yuneta/last-deploy-hook-run}"
web_reload="${YUNETA_WEB_RELOAD-}"
ycommand="${YUNETA_YCOMMAND:-ycommand}"
agent_url="${YUNETA_AGENT_URL:-ws://127.0.0.1:1991}"
run_as="${YUNETA_USER-yuneta}"
export YUNETA_PREFIX="$prefix"

mkdir -p -- "$(dirname -- "$hook_log")" "$(dirname -- "$stamp")"
case "$hook_log_max" in
'' | *[!0-9]*)
    echo "reload-certs: YUNETA_HOOK_LOG_MAX=$hook_log_max is not a byte count; using 1048576" >&2
    hook_log_max=1048576
    ;;
esac
# Rotation: a log past its limit is moved aside whole (one old log kept), so the log of a
# host renewing for years stays bounded and this run's lines start the new one.
log_size="$(stat -c %s -- "$hook_log" 2>/dev/null || echo 0)"
if [ "$log_size" -gt "$hook_log_max" ]; then
    mv -f -- "$hook_log" "$hook_log.1" ||
        echo "reload-certs: cannot rotate $hook_log; appending to it" >&2
fi
# From here on every line, the steps' output included, goes to the log; without one, to certbot.
if { : >>"$hook_log"; } 2>/dev/null; then
    exec >>"$hook_log" 2>&1
else
    echo "reload-certs: cannot append to $hook_log; logging to stderr" >&2
    exec 1>&2
fi

log() { printf '%s reload-certs[%d] %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$$" "$*"; }

failures=0
# step NAME SECONDS COMMAND...: run one step with a time limit; log its output and its result.
step() {
    local name="$1" seconds="$2" rc
    shift 2
    log "$name: running $*"
    timeout --kill-after=5 "$seconds" "$@" 2>&1 | while IFS= read -r line; do log "$name: | $line"; done
    rc="${PIPESTATUS[0]}"
    if [ "$rc" -eq 0 ]; then
        log "$name: ok"
    else
        log "$name: FAILED (exit $rc)"
        failures=$((failures + 1))
    fi
    return "$rc"
}

log "start: RENEWED_LINEAGE=${RENEWED_LINEAGE-(unset)} RENEWED_DOMAINS=${RENEWED_DOMAINS-(unset)}"

step copy 120 "$copy_certs"

read -r -a web <<<"$web_reload"
if [ "${#web[@]}" -gt 0 ]; then
    step web-reload 60 "${web[@]}"
else
    log "web-reload: skipped (no web server configured: YUNETA_WEB_RELOAD is empty)"
fi

as_user=()
if [ "$(id -u)" -eq 0 ] && [ -n "$run_as" ]; then
    as_user=(runuser -u "$run_as" --)
fi
if ! step reload-yunos 60 "${as_user[@]}" "$ycommand" -u "$agent_url" -w 30 \
    -c 'command-yuno command=reload-certs service=__yuno__'; then
    log "reload-yunos: the yunos were not told; the agent's cert sync (layer 2) picks the new files up from the store"
fi

now="$(date +%s)"
if printf '%s\n' "$now" >"$stamp.tmp.$$" && chmod 0644 -- "$stamp.tmp.$$" && mv -f -- "$stamp.tmp.$$" "$stamp"; then
    log "stamp: $stamp = $now"
else
    rm -f -- "$stamp.tmp.$$"
    log "stamp: FAILED to write $stamp"
    failures=$((failures + 1))
fi

log "done: $failures step(s) failed"
[ "$failures" -eq 0 ]
