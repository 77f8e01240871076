#!/usr/bin/env bash
# Installs tether agent (metering role) as a systemd service:
#   sudo deploy/install.sh [path/to/tether]   (default: target/release/tether)
# Places the binary in /usr/local/bin, the config in /etc/tether/agent.yaml and the secrets
# file in /etc/tether/agent.env (both kept when present), the unit in /etc/systemd/system,
# creates the `tether` system user, checks the config and enables the service. Re-running it
# upgrades the binary and the unit. DESTDIR=/some/root installs into a staging tree and skips
# the user, systemctl and the check (packaging, tests).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-"$here/../target/release/tether"}
root=${DESTDIR:-}

[ -x "$bin" ] || { echo "no tether binary at $bin (cargo build --release -p tether)" >&2; exit 1; }
if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
    echo "run as root (or set DESTDIR)" >&2
    exit 1
fi

install -d -m 0755 "$root/usr/local/bin" "$root/etc/systemd/system" "$root/usr/local/share/doc/tether"
install -d -m 0750 "$root/etc/tether"
install -m 0755 "$bin" "$root/usr/local/bin/tether"
install -m 0644 "$here/tether-agent.service" "$root/etc/systemd/system/tether-agent.service"
[ -f "$here/../docs/deploy.md" ] && install -m 0644 "$here/../docs/deploy.md" "$root/usr/local/share/doc/tether/deploy.md"
if [ ! -e "$root/etc/tether/agent.yaml" ]; then
    install -m 0640 "$here/metering.yaml" "$root/etc/tether/agent.yaml"
fi
if [ ! -e "$root/etc/tether/agent.env" ]; then
    install -m 0600 "$here/agent.env.example" "$root/etc/tether/agent.env"
    echo "edit $root/etc/tether/agent.env (SERVER_ID, CONTROL_PLANE_URL, CONTROL_PLANE_API_KEY, …)"
fi

if [ -n "$root" ]; then
    echo "installed into $root"
    exit 0
fi

if ! id tether >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin tether
fi
chgrp tether /etc/tether /etc/tether/agent.yaml
systemctl daemon-reload
# The check reads the env file as the service would.
if (set -a; . /etc/tether/agent.env; set +a; /usr/local/bin/tether agent --config /etc/tether/agent.yaml --check-config); then
    systemctl enable --now tether-agent.service
    echo "started: systemctl status tether-agent; journalctl -u tether-agent; ls /var/log/tether"
else
    systemctl enable tether-agent.service
    echo "configuration check failed: fix /etc/tether/agent.env or agent.yaml, then systemctl start tether-agent" >&2
    exit 1
fi
