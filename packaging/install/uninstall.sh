#!/bin/sh
# Removes the Driftline agent: stops and disables the service, removes the unit, the binary
# and the extracted native addons. The configuration (/etc/driftline) and the data folder
# (/var/lib/driftline-agent: identity, unsent telemetry, models, trust root) stay, so a
# reinstall carries on as the same device, unless --purge is given.
#
# Options:
#   --purge        also delete the configuration, the data folder and the service user
#   --prefix DIR   where bin/driftline-agent was installed (default /usr/local)
#   --user NAME    the service user (default driftline-agent)
# Environment:
#   DESTDIR        act on a staged tree instead of / (no systemctl, no user removal)
set -eu

die() { echo "uninstall.sh: $*" >&2; exit 2; }
purge=0; prefix=/usr/local; user=driftline-agent
while [ $# -gt 0 ]; do
  case "$1" in
    --purge) purge=1; shift ;;
    --prefix) prefix=${2:?}; shift 2 ;;
    --user) user=${2:?}; shift 2 ;;
    -h | --help) sed -n '2,/^set -eu/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
root=${DESTDIR:-}
if [ -z "$root" ] && [ "$(id -u)" != 0 ]; then die "run as root (or set DESTDIR)"; fi

if [ -z "$root" ] && command -v systemctl >/dev/null 2>&1; then
  systemctl disable --now driftline-agent.service >/dev/null 2>&1 || true
fi
rm -f "$root/etc/systemd/system/driftline-agent.service" "$root$prefix/bin/driftline-agent"
rm -rf "$root/var/cache/driftline-agent"
if [ -z "$root" ] && command -v systemctl >/dev/null 2>&1; then systemctl daemon-reload || true; fi

if [ "$purge" = 1 ]; then
  rm -rf "$root/etc/driftline" "$root/var/lib/driftline-agent"
  if [ -z "$root" ] && id -u "$user" >/dev/null 2>&1; then userdel "$user" 2>/dev/null || true; fi
  echo "driftline-agent removed, with its configuration and data"
else
  echo "driftline-agent removed; kept $root/etc/driftline and $root/var/lib/driftline-agent (use --purge to delete them)"
fi
