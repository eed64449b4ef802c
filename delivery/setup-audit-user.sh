#!/bin/sh
# Create the dedicated user that runs the portal and owns its audit mirror, and
# the folder of the JSONL mirror (AUDIT_JSONL_PATH). Safe to run again: it
# creates what is missing and puts owner and modes right on what exists.
#
#   scripts/setup-audit-user.sh [--user NAME] [--dir FOLDER] [--home DIR]
#
#   --user NAME    the system user (default sealed-search)
#   --dir FOLDER   the JSONL mirror's folder (default /var/log/sealed-search/audit):
#                  mode 0700, owned by the user; every file in it 0600
#   --home DIR     the user's home, holding the portal's state (default /var/lib/sealed-search)
#
# Run as root. The portal must run as this user (the systemd unit's User=, or
# the container's user) so that it alone can read and append the mirror.
set -eu

user=sealed-search
dir=/var/log/sealed-search/audit
home=/var/lib/sealed-search
while [ $# -gt 0 ]; do
    case "$1" in
        --user) user=$2; shift 2 ;;
        --dir) dir=$2; shift 2 ;;
        --home) home=$2; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "setup-audit-user.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ "$(id -u)" -ne 0 ]; then
    echo "setup-audit-user.sh: run as root (it creates a system user and sets owners)" >&2
    exit 1
fi

nologin=$(command -v nologin || echo /usr/sbin/nologin)
if id "$user" >/dev/null 2>&1; then
    echo "user $user exists"
else
    if command -v useradd >/dev/null 2>&1; then
        useradd --system --user-group --home-dir "$home" --no-create-home --shell "$nologin" \
            --comment "sealed-search portal and audit mirror" "$user"
    else
        adduser --system --group --home "$home" --no-create-home --shell "$nologin" "$user"
    fi
    echo "created system user $user (no login shell)"
fi
group=$(id -gn "$user")

umask 077
mkdir -p "$home" "$dir"
chown "$user:$group" "$home" "$dir"
chmod 0700 "$home" "$dir"
# Files already there (an upgrade, or a second run): owner and 0600, never widened.
find "$dir" -mindepth 1 -type f -exec chown "$user:$group" {} + -exec chmod 0600 {} +
find "$dir" -mindepth 1 -type d -exec chown "$user:$group" {} + -exec chmod 0700 {} +

echo "audit mirror folder $dir: owner $user, mode 0700, files 0600"
echo "set AUDIT_JSONL_PATH=$dir/audit.jsonl and run the portal as $user (systemd: User=$user, UMask=0077)"
