#!/bin/bash
# Installs powerbi-tokend as a systemd service. Run as root from a checkout:
#
#     deploy/systemd/install.sh [ROOT]
#
# ROOT (default /) is the root of the file system to install into. Installs:
#   /usr/local/bin/powerbi-tokend                 0755  $POWERBI_TOKEND_BIN, default target/release/powerbi-tokend
#   /etc/sysusers.d/powerbi-tokend.conf           0644  and creates the group powerbi-tokens with systemd-sysusers
#   /etc/powerbi-tokend/config.toml               0640  root:powerbi-tokens (the service's group reads it,
#                                                       nobody else); holds no secret; kept if it exists
#   /etc/systemd/system/powerbi-tokend.service    0644
#   /etc/credstore/powerbi-tokend.client-secret   0600  root:root, in a 0700 directory; kept if it exists
# The client secret is read from standard input (a hidden prompt on a terminal), only when the
# credential does not exist yet. Running it again upgrades the binary and the unit and keeps the
# configuration and the secret.
set -euo pipefail

root=${1:-/}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=${POWERBI_TOKEND_BIN:-$here/../../target/release/powerbi-tokend}

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root" >&2
    exit 1
fi
if [ ! -x "$bin" ]; then
    echo "install.sh: $bin not found: run cargo build --release, or set POWERBI_TOKEND_BIN" >&2
    exit 1
fi

install -D -m 0755 -o root -g root "$bin" "$root/usr/local/bin/powerbi-tokend"

install -D -m 0644 -o root -g root "$here/powerbi-tokend.sysusers" "$root/etc/sysusers.d/powerbi-tokend.conf"
systemd-sysusers --root="$root" "$root/etc/sysusers.d/powerbi-tokend.conf"

# The group by its number in ROOT's own group file: under a scratch ROOT the host may not know it.
gid=$(awk -F: '$1 == "powerbi-tokens" { print $3 }' "$root/etc/group")
if [ -z "$gid" ]; then
    echo "install.sh: systemd-sysusers did not create the group powerbi-tokens in $root/etc/group" >&2
    exit 1
fi

install -d -m 0755 -o root -g root "$root/etc/powerbi-tokend"
if [ ! -e "$root/etc/powerbi-tokend/config.toml" ]; then
    install -m 0640 -o root -g "$gid" "$here/config.toml" "$root/etc/powerbi-tokend/config.toml"
fi

install -D -m 0644 -o root -g root "$here/powerbi-tokend.service" "$root/etc/systemd/system/powerbi-tokend.service"

install -d -m 0700 -o root -g root "$root/etc/credstore"
secret_file=$root/etc/credstore/powerbi-tokend.client-secret
if [ ! -e "$secret_file" ]; then
    if [ -t 0 ]; then
        read -r -s -p "Client secret of the Entra app (input hidden): " secret
        echo
    else
        IFS= read -r secret || true
    fi
    if [ -z "$secret" ]; then
        echo "install.sh: no client secret given; run again to enter it" >&2
        exit 1
    fi
    (umask 0077 && printf '%s' "$secret" >"$secret_file.new")
    chown root:root "$secret_file.new"
    mv "$secret_file.new" "$secret_file"
fi

if [ "$root" = / ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi

check="powerbi-tokend check --config /etc/powerbi-tokend/config.toml --load-credential client-secret:/etc/credstore/powerbi-tokend.client-secret"
if [ "$root" = / ]; then
    cat <<EOF
Installed. Next:
  \$EDITOR /etc/powerbi-tokend/config.toml     # client_id and the tenants
  $check
  systemctl enable --now powerbi-tokend
Consumers read /run/powerbi-tokend/<name>.json with SupplementaryGroups=powerbi-tokens.
EOF
else
    cat <<EOF
Installed under $root. On the system that boots from it:
  \$EDITOR /etc/powerbi-tokend/config.toml     # client_id and the tenants
  $check
  systemctl enable --now powerbi-tokend
EOF
fi
