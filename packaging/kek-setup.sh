#!/bin/sh
# Put the key store's key-encryption key (KEK) into the systemd credential store, never beside the store.
# Run as root by the packages' postinst (Debian) and %post (RPM), installed as /usr/lib/qkdd/kek-setup;
# running it again changes nothing once a KEK is in place.
#
#   a KEK credential exists (the sealed drop-in, or /etc/qkdd/credentials/kek)  -> kept as it is
#   a KEK beside the store (/var/lib/qkdd/kek, made by a daemon run without one) -> moved into the
#       credential store: written, read back and compared byte for byte, only then removed from the state
#   no KEK and no key store yet                                                  -> a new random 32-byte KEK
#   no KEK but a key store exists                                                -> nothing is made (a new
#       KEK could not open the store); a warning says what to do, and the service refuses to start
#
# Sealed or plain: by default the KEK is sealed with `systemd-creds encrypt` (the host key in
# /var/lib/systemd/credential.secret, plus the TPM2 when the host has one, bound to no PCR so that a
# firmware or Secure Boot update cannot lock it out) into the drop-in DROPIN as SetCredentialEncrypted=kek;
# systemd decrypts it when it starts the service. A copy of /etc (backups, etckeeper, configuration
# management) then holds no usable KEK, and with a TPM2 neither does a copy of the whole disk. Without a
# working systemd-creds, or with QKDD_KEK_SEAL=no (a KEK that must open the store on another host), it is
# /etc/qkdd/credentials/kek, root-owned 0600. Either way the daemon sees the credential "kek" on a ramfs
# readable only by the qkdd user.
set -eu

STATE_DIR=/var/lib/qkdd
CREDENTIALS_DIR=/etc/qkdd/credentials
DROPIN_DIR=/etc/systemd/system/qkdd.service.d
DROPIN=$DROPIN_DIR/50-kek.conf
LEGACY=$STATE_DIR/kek
PLAIN=$CREDENTIALS_DIR/kek
KEK_BYTES=32

say() { echo "qkdd kek-setup: $*" >&2; }

umask 077
tmp_parent=/tmp
[ -d /run ] && [ -w /run ] && tmp_parent=/run
work=$(mktemp -d "$tmp_parent/qkdd-kek.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Seal file $1 into the drop-in; succeed only if the sealed copy decrypts to exactly $1.
seal() {
    [ "${QKDD_KEK_SEAL:-yes}" != "no" ] && command -v systemd-creds >/dev/null 2>&1 || return 1
    if ! systemd-creds encrypt --name=kek --with-key=auto --tpm2-pcrs= "$1" "$work/sealed" 2>"$work/log" ||
       ! systemd-creds decrypt --name=kek "$work/sealed" "$work/check" 2>>"$work/log" ||
       ! cmp -s "$1" "$work/check"; then
        say "systemd-creds could not seal the KEK ($(tail -n 1 "$work/log")); storing it as $PLAIN"
        return 1
    fi
    install -d -m 0755 "$DROPIN_DIR"
    {
        echo "# Written by /usr/lib/qkdd/kek-setup: the key store's key-encryption key, sealed with"
        echo "# systemd-creds (it decrypts on this host only). Without it the key store cannot be opened."
        echo "[Service]"
        echo "SetCredentialEncrypted=kek: \\"
        sed -e 's/^/        /' -e '$!s/$/ \\/' "$work/sealed"
    } >"$work/dropin"
    chmod 0644 "$work/dropin"  # sealed: safe to read; systemd warns about unit files others cannot read
    mv "$work/dropin" "$DROPIN"
    say "KEK sealed into $DROPIN"
}

# Store file $1 as the plain credential; succeed only if the copy is identical.
store_plain() {
    install -d -m 0700 -o root -g root "$CREDENTIALS_DIR"
    install -m 0600 -o root -g root "$1" "$PLAIN.new"
    cmp -s "$1" "$PLAIN.new" || { rm -f "$PLAIN.new"; say "could not write $PLAIN"; return 1; }
    mv "$PLAIN.new" "$PLAIN"
    say "KEK stored in $PLAIN (root, 0600)"
}

place() {
    seal "$1" || store_plain "$1"
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null 2>&1 || true
    fi
}

if [ -e "$DROPIN" ] || [ -e "$PLAIN" ]; then
    if [ -e "$LEGACY" ]; then
        say "warning: $LEGACY beside the key store is not used (the credential is); remove it once the" \
            "service has started"
    fi
    exit 0
fi

if [ -e "$LEGACY" ]; then
    # An earlier daemon made the store with this KEK: the same bytes go into the credential store.
    cp "$LEGACY" "$work/kek"
    place "$work/kek"
    rm -f "$LEGACY"
    say "moved the KEK from $LEGACY into the credential store"
    exit 0
fi

if [ -e "$STATE_DIR/keys.sqlite3" ] || [ -e "$STATE_DIR/keys.db" ]; then
    say "warning: a key store exists in $STATE_DIR but no KEK was found; not creating one (it could not" \
        "open the store). Put the store's KEK in $PLAIN (root, 0600), or move the store away, then run" \
        "/usr/lib/qkdd/kek-setup again"
    exit 0
fi

od -An -tx1 -v -N "$KEK_BYTES" /dev/urandom | tr -d ' \n' >"$work/kek"
echo >>"$work/kek"
[ "$(wc -c <"$work/kek")" -eq $((2 * KEK_BYTES + 1)) ] || { say "could not read /dev/urandom"; exit 1; }
place "$work/kek"
