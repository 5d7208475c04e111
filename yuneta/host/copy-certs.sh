#!/bin/bash
# copy-certs.sh: mirror certbot's lineages into the Yuneta certificate store.
#
# Runs as root: from the certbot deploy hook (layer 1) and from the agent's sync through
# `sudo -n` (layer 2). The yunos never read /etc/letsencrypt (root 0700); they read the store,
# owned by the yuneta user. For each lineage name (from certs.list, else every live/*/):
#   live/<name>/fullchain.pem -> <store>/<name>.crt           yuneta:yuneta 0644
#   live/<name>/chain.pem     -> <store>/<name>.chain         yuneta:yuneta 0644
#   live/<name>/privkey.pem   -> <store>/private/<name>.key   yuneta:yuneta 0600
# certbot's live links are resolved once, and the certificate and key are checked to belong
# together before anything is written: certbot swaps the links one at a time, so a copy made
# mid-renewal could otherwise pair a new certificate with the old key. The key is written
# before the certificate, so a reader meets a new certificate with an old key only if it read
# the key before this run. Like `install -C`, a file whose content, owner and mode are already
# right is not touched (its mtime does not move); a changed one is written beside its target
# and renamed over it, so a reader never meets a missing or half-written file (`install -C`
# unlinks the target and then re-creates it). The renames start only once all of a lineage's
# changed files are written: a write that fails leaves the lineage's old files as they were.
#
# A name that fails is logged and the others are still copied. Exit status: 0 all copied or
# unchanged, 1 some name failed, 2 a usage or setup error. Nothing secret is printed.
#
# Every path is configurable, so the whole life cycle runs unprivileged in a temporary tree:
#   YUNETA_PREFIX            root of every path below (`yuneta install --prefix` sets its default)
#   YUNETA_LETSENCRYPT_DIR   certbot's config dir (default $YUNETA_PREFIX/etc/letsencrypt)
#   YUNETA_CERTS_DIR         the store (default $YUNETA_PREFIX/yuneta/store/certs)
#   YUNETA_CERTS_LIST        lineage names, one a line, # comments (default <store>/certs.list)
#   YUNETA_CERTS_OWNER, YUNETA_CERTS_GROUP   owner of the copies when run as root (yuneta);
#                            empty keeps the files owned by whoever runs the script
set -u
umask 077

prefix="${YUNETA_PREFIX-}"
le_dir="${YUNETA_LETSENCRYPT_DIR:-$prefix/etc/letsencrypt}"
store="${YUNETA_CERTS_DIR:-$prefix/yuneta/store/certs}"
list="${YUNETA_CERTS_LIST:-$store/certs.list}"
owner="${YUNETA_CERTS_OWNER-yuneta}"
group="${YUNETA_CERTS_GROUP-yuneta}"

say() { printf 'copy-certs: %s\n' "$*"; }
fail() { printf 'copy-certs: ERROR %s\n' "$*" >&2; }

if [ "$#" -ne 0 ]; then
    fail "takes no arguments (configure it with YUNETA_* variables); got: $*"
    exit 2
fi

# install(1) can only give files away as root; unprivileged runs keep the caller as owner.
own=()
if [ "$(id -u)" -eq 0 ]; then
    [ -n "$owner" ] && own+=(-o "$owner")
    [ -n "$group" ] && own+=(-g "$group")
fi

# `yuneta install` makes the store; create only what is missing, and never write through a
# symlink a store owner could have planted to make root write (or chown) elsewhere.
for dir in "$store" "$store/private"; do
    if [ -L "$dir" ]; then
        fail "$dir is a symlink: refusing to write through it"
        exit 2
    fi
done
[ -d "$store" ] || install -d -m 0755 "${own[@]}" -- "$store"
[ -d "$store/private" ] || install -d -m 0700 "${own[@]}" -- "$store/private"
if ! [ -d "$store/private" ]; then
    fail "cannot create the store $store (or its private/ directory)"
    exit 2
fi

names=()
if [ -f "$list" ]; then
    while IFS= read -r line || [ -n "$line" ]; do
        line="${line%%#*}"
        # Trim the ends only: certbot's lineage names may hold blanks ("my site").
        line="${line#"${line%%[![:space:]]*}"}"
        line="${line%"${line##*[![:space:]]}"}"
        [ -n "$line" ] && names+=("$line")
    done <"$list"
    source_of_names="$list"
else
    if [ ! -d "$le_dir/live" ]; then
        fail "no $le_dir/live directory and no $list: nothing to copy from"
        exit 2
    fi
    for dir in "$le_dir"/live/*/; do
        [ -d "$dir" ] || continue
        dir="${dir%/}"
        names+=("${dir##*/}")
    done
    source_of_names="$le_dir/live"
fi
if [ "${#names[@]}" -eq 0 ]; then
    say "no lineage names in $source_of_names: nothing to do"
    exit 0
fi

# The public key of a certificate or a private key, or nothing when it does not parse.
pubkey_of_cert() { openssl x509 -in "$1" -noout -pubkey 2>/dev/null; }
pubkey_of_key() { openssl pkey -in "$1" -pubout 2>/dev/null; }

# owned_right FILE: FILE has the store's owner and group (by name or number), or no owner is set.
owned_right() {
    [ "${#own[@]}" -eq 0 ] && return 0
    local u g
    read -r u g <<<"$(stat -c '%U:%u %G:%g' -- "$1")"
    { [ -z "$owner" ] || [ "$owner" = "${u%%:*}" ] || [ "$owner" = "${u##*:}" ]; } \
        && { [ -z "$group" ] || [ "$group" = "${g%%:*}" ] || [ "$group" = "${g##*:}" ]; }
}

# stage SRC DST MODE: prints "unchanged" when DST already is SRC with the store's owner and
# MODE; else copies SRC beside DST (a hidden temporary name) and prints that path. Replaces
# nothing: copy_one renames the staged files once every one of a lineage is staged.
stage() {
    local src="$1" dst="$2" mode="$3" tmp
    if cmp -s -- "$src" "$dst" 2>/dev/null && [ "$(stat -c %a -- "$dst")" = "${mode#0}" ] \
        && owned_right "$dst"; then
        echo unchanged
        return 0
    fi
    tmp="$(dirname -- "$dst")/.$(basename -- "$dst").copy-certs.$$"
    if install -m "$mode" "${own[@]}" -- "$src" "$tmp"; then
        echo "$tmp"
        return 0
    fi
    rm -f -- "$tmp"
    return 1
}

# discard STAGED...: remove the staged copies that were not renamed into place.
discard() {
    local f
    for f in "$@"; do
        [ "$f" = unchanged ] || rm -f -- "$f"
    done
}

copy_one() {
    local name="$1" live fullchain chain privkey
    case "$name" in
        */* | .* | "")
            fail "$name: not a lineage name (no '/', no leading '.')"
            return 1
            ;;
    esac
    live="$le_dir/live/$name"
    if [ ! -d "$live" ]; then
        fail "$name: no lineage directory $live"
        return 1
    fi
    # Resolve each link once: everything below reads these archive files, never the links.
    fullchain="$(readlink -e -- "$live/fullchain.pem")" || { fail "$name: $live/fullchain.pem is missing or a broken link"; return 1; }
    chain="$(readlink -e -- "$live/chain.pem")" || { fail "$name: $live/chain.pem is missing or a broken link"; return 1; }
    privkey="$(readlink -e -- "$live/privkey.pem")" || { fail "$name: $live/privkey.pem is missing or a broken link"; return 1; }
    for f in "$fullchain" "$chain" "$privkey"; do
        if ! [ -f "$f" ] || ! head -c 1 -- "$f" >/dev/null 2>&1; then
            fail "$name: cannot read $f"
            return 1
        fi
    done
    if command -v openssl >/dev/null 2>&1; then
        local cert_pub key_pub
        cert_pub="$(pubkey_of_cert "$fullchain")"
        key_pub="$(pubkey_of_key "$privkey")"
        if [ -z "$cert_pub" ]; then
            fail "$name: $fullchain is not a PEM certificate"
            return 1
        fi
        if [ -z "$key_pub" ]; then
            fail "$name: $privkey is not a readable PEM private key"
            return 1
        fi
        if [ "$cert_pub" != "$key_pub" ]; then
            fail "$name: $privkey does not match $fullchain (certbot mid-renewal? the next run copies it)"
            return 1
        fi
    fi
    # Every changed file is staged beside its target first, and only then renamed into place,
    # key first: a copy that fails (a full disk, a size limit) replaces nothing, so the store
    # keeps the old certificate with its own key rather than a new key with the old one.
    local -a targets=("$store/private/$name.key" "$store/$name.crt" "$store/$name.chain")
    local -a sources=("$privkey" "$fullchain" "$chain") modes=(0600 0644 0644) staged=() what=()
    local i tmp
    for i in 0 1 2; do
        if ! tmp="$(stage "${sources[i]}" "${targets[i]}" "${modes[i]}")"; then
            fail "$name: cannot write ${targets[i]}: nothing of $name replaced (the next run copies it)"
            discard "${staged[@]}"
            return 1
        fi
        staged+=("$tmp")
    done
    for i in 0 1 2; do
        if [ "${staged[i]}" = unchanged ]; then
            what+=(unchanged)
        elif mv -f -- "${staged[i]}" "${targets[i]}"; then
            what+=(written)
        else
            fail "$name: cannot rename a copy onto ${targets[i]}"
            discard "${staged[@]:i}"
            return 1
        fi
    done
    say "$name: key ${what[0]}, crt ${what[1]}, chain ${what[2]} (from $(dirname -- "$fullchain"))"
}

failed=()
for name in "${names[@]}"; do
    copy_one "$name" || failed+=("$name")
done
if [ "${#failed[@]}" -ne 0 ]; then
    fail "${#failed[@]} of ${#names[@]} lineage(s) failed: ${failed[*]}"
    exit 1
fi
say "${#names[@]} lineage(s) in $store up to date"
exit 0
