#!/bin/sh
# Fetch the IETF base MIB modules that LVSGUARD-MIB imports into DEST.
#
# The texts are not in the project: Debian deems the IETF MIB texts non-free,
# but ships the ones we need inside its erlang-snmp package. We take them
# from that package with apt-get (no root needed for `apt-get download`) and
# store each module as NAME.txt, which smilint (SMIPATH) and net-snmp (-M)
# both find.
#
# usage: fetch-base-mibs.sh DEST
set -eu

DEST=${1:?usage: fetch-base-mibs.sh DEST}
MODULES="SNMPv2-SMI SNMPv2-TC SNMPv2-CONF SNMPv2-MIB SNMP-FRAMEWORK-MIB INET-ADDRESS-MIB"

have_all() {
    for m in $MODULES; do
        [ -s "$DEST/$m.txt" ] || return 1
    done
}

if have_all; then
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download erlang-snmp >/dev/null 2>&1) || {
    echo "fetch-base-mibs: 'apt-get download erlang-snmp' failed (run 'apt-get update' first?)" >&2
    exit 1
}
dpkg-deb -x "$work"/erlang-snmp_*.deb "$work/x"
mkdir -p "$DEST"
for m in $MODULES; do
    src=$(find "$work/x" -path '*/mibs/*' -name "$m.mib" | head -n 1)
    if [ -z "$src" ]; then
        echo "fetch-base-mibs: $m.mib not found in erlang-snmp" >&2
        exit 1
    fi
    cp "$src" "$DEST/$m.txt.tmp" && mv "$DEST/$m.txt.tmp" "$DEST/$m.txt"
done
