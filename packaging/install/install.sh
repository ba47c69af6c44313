#!/bin/sh
# Installs (or upgrades) the Driftline agent on a Linux device with systemd.
#
#   sudo ./install.sh --binary ./driftline-agent-linux-arm64 \
#        --server cp.example.com:7443 --device-id edge-17 --enroll-token <token from `driftline devices token edge-17`>
#
# Idempotent: run it again with a new --binary to upgrade. An upgrade replaces the binary
# (atomically) and the unit; it keeps the configuration, the data folder (identity, buffer,
# models, pinned trust root) and the enrollment settings unless new ones are given.
#
# Options:
#   --binary FILE          the agent executable (default: driftline-agent-linux-<arch> beside this script)
#   --config FILE          install this agent.yaml (default: keep the existing one, or write the template)
#   --trusted-root FILE    pin this root metadata (root.json) before enrollment instead of trusting the
#                          one the control plane hands out; an already pinned root is never replaced
#   --server HOST:PORT     control plane gRPC address (written to agent.env)
#   --device-id ID         device id to enroll as (agent.env)
#   --enroll-token TOKEN   one-time enrollment token (agent.env, mode 0600)
#   --prefix DIR           where bin/driftline-agent goes (default /usr/local)
#   --user NAME            the service user, created if missing (default driftline-agent)
#   --no-start             do not enable or (re)start the service
#   --no-selftest          do not run `driftline-agent selftest` as the service user
# Environment:
#   DESTDIR                stage into this folder instead of / (no user creation, systemctl or selftest)
set -eu

die() { echo "install.sh: $*" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)

case "$(uname -m)" in
  x86_64 | amd64) arch=x64 ;;
  aarch64 | arm64) arch=arm64 ;;
  *) arch=$(uname -m) ;;
esac
binary=""; config=""; trusted_root=""; server=""; device_id=""; enroll_token=""
prefix=/usr/local; user=driftline-agent; start=1; selftest=1
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=${2:?}; shift 2 ;;
    --config) config=${2:?}; shift 2 ;;
    --trusted-root) trusted_root=${2:?}; shift 2 ;;
    --server) server=${2:?}; shift 2 ;;
    --device-id) device_id=${2:?}; shift 2 ;;
    --enroll-token) enroll_token=${2:?}; shift 2 ;;
    --prefix) prefix=${2:?}; shift 2 ;;
    --user) user=${2:?}; shift 2 ;;
    --no-start) start=0; shift ;;
    --no-selftest) selftest=0; shift ;;
    -h | --help) sed -n '2,/^set -eu/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[ -n "$binary" ] || binary="$here/driftline-agent-linux-$arch"
[ -f "$binary" ] || die "no agent binary at $binary (pass --binary FILE)"
[ -z "$config" ] || [ -f "$config" ] || die "no configuration file at $config"
[ -z "$trusted_root" ] || [ -f "$trusted_root" ] || die "no root metadata at $trusted_root"

root=${DESTDIR:-}
staged=0; [ -z "$root" ] || staged=1
if [ "$staged" = 0 ] && [ "$(id -u)" != 0 ]; then die "run as root (or set DESTDIR to stage the files)"; fi

bindir="$prefix/bin"
etc=/etc/driftline
data=/var/lib/driftline-agent
cache=/var/cache/driftline-agent
unit=/etc/systemd/system/driftline-agent.service

# The service user. When staging, files are owned by it only if it exists already.
owner=""
if id -u "$user" >/dev/null 2>&1; then
  owner=$user
elif [ "$staged" = 0 ]; then
  useradd --system --no-create-home --home-dir "$data" --shell /usr/sbin/nologin --user-group "$user" 2>/dev/null ||
    adduser --system --no-create-home --home "$data" --shell /usr/sbin/nologin --group "$user"
  owner=$user
else
  echo "install.sh: user $user does not exist; staged files keep the installing user as owner" >&2
fi
group=""; [ -z "$owner" ] || group=$(id -gn "$owner")
# Staging as an ordinary user (an image build, the tests): files stay that user's.
own() {
  if [ -z "$owner" ] || { [ "$staged" = 1 ] && [ "$(id -u)" != 0 ]; }; then return 0; fi
  chown "$1" "$2"
}

# The binary: copied beside its final name, then renamed over it, so a running agent keeps
# its inode and a crash mid-copy never leaves half a binary.
install -d -m 0755 "$root$bindir"
cp "$binary" "$root$bindir/.driftline-agent.new"
chmod 0755 "$root$bindir/.driftline-agent.new"
mv -f "$root$bindir/.driftline-agent.new" "$root$bindir/driftline-agent"

# Configuration: readable by the service user, writable by root only.
install -d -m 0755 "$root$etc"
if [ -n "$config" ]; then
  install -m 0640 "$config" "$root$etc/agent.yaml"
elif [ ! -f "$root$etc/agent.yaml" ]; then
  install -m 0640 "$here/agent.yaml" "$root$etc/agent.yaml"
fi
own "root:${group:-root}" "$root$etc/agent.yaml"
if [ -n "$server$device_id$enroll_token" ]; then
  env_file="$root$etc/agent.env"
  tmp="$env_file.new"
  : >"$tmp"; chmod 0600 "$tmp"
  # Settings not given now are kept from the previous agent.env.
  for pair in "DRIFTLINE_AGENT_SERVER=$server" "DRIFTLINE_AGENT_DEVICE_ID=$device_id" "DRIFTLINE_AGENT_ENROLL_TOKEN=$enroll_token"; do
    name=${pair%%=*}; value=${pair#*=}
    if [ -z "$value" ] && [ -f "$env_file" ]; then value=$(sed -n "s/^$name=//p" "$env_file"); fi
    [ -z "$value" ] || echo "$name=$value" >>"$tmp"
  done
  mv -f "$tmp" "$env_file"
fi

# Data folder: created once, never emptied; an upgrade only makes sure of owner and mode.
install -d -m 0700 "$root$data" "$root$cache"
own "$owner:$group" "$root$data"
own "$owner:$group" "$root$cache"
if [ -n "$trusted_root" ]; then
  if [ -f "$root$data/trust/root.json" ]; then
    echo "install.sh: a trust root is already pinned in $data/trust; leaving it (roots rotate by signed updates only)" >&2
  else
    install -d -m 0700 "$root$data/trust"
    install -m 0600 "$trusted_root" "$root$data/trust/root.json"
    own "$owner:$group" "$root$data/trust"
    own "$owner:$group" "$root$data/trust/root.json"
  fi
fi

# The unit, with this installation's paths.
install -d -m 0755 "$root$(dirname "$unit")"
sed -e "s|@BINDIR@|$bindir|g" -e "s|@USER@|$user|g" "$here/driftline-agent.service" >"$root$unit.new"
chmod 0644 "$root$unit.new"
mv -f "$root$unit.new" "$root$unit"

if [ "$staged" = 1 ]; then
  echo "staged driftline-agent into $root"
  exit 0
fi

if [ "$selftest" = 1 ]; then
  # As the service user, with the service's cache folder: also extracts the native addons there.
  if command -v runuser >/dev/null 2>&1; then
    runuser -u "$user" -- env DRIFTLINE_AGENT_NATIVE_DIR="$cache" "$bindir/driftline-agent" selftest
  else
    su -s /bin/sh "$user" -c "DRIFTLINE_AGENT_NATIVE_DIR=$cache $bindir/driftline-agent selftest"
  fi
fi

if command -v systemctl >/dev/null 2>&1; then
  systemctl daemon-reload
  if [ "$start" = 1 ]; then
    systemctl enable driftline-agent.service >/dev/null
    systemctl restart driftline-agent.service
    echo "driftline-agent $("$bindir/driftline-agent" --version) installed and (re)started: journalctl -u driftline-agent -f"
  else
    echo "driftline-agent $("$bindir/driftline-agent" --version) installed; start it with: systemctl enable --now driftline-agent"
  fi
else
  echo "driftline-agent installed; systemd not found: run $bindir/driftline-agent run --config $etc/agent.yaml under your supervisor"
fi
