#!/usr/bin/env bash
# Installs goldenhour as a service on this host (`make install` runs it after `make setup`):
#   - the `goldenhour` command: $PREFIX/bin/goldenhour, a link to the checkout's venv
#   - the systemd units:        $UNITDIR/goldenhour.service (the daemon),
#                               $UNITDIR/goldenhour-recorder.service (the flight recorder), and
#                               goldenhour-relay.service (the fleet's central webhook relay: enable it
#                               only on the relay's machine)
#   - the pre-restart drop-in:  $PREFIX/share/goldenhour/goldenhour-pre-restart.conf (an example to
#                               copy into /etc/systemd/system/<unit>.d/, see the file)
#   - the config:               $SYSCONFDIR/goldenhour/config.example.toml (every key, commented), and
#                               config.toml from it when there is none yet (changes nothing until edited)
#   - the directories:          /var/lib/goldenhour (store, state), mode 0750
# It enables nothing by itself; it prints the next steps.
#
#   scripts/install.sh                         as root, into the live system
#   DESTDIR=/tmp/stage scripts/install.sh      stage the same tree under a directory (packaging, tests)
# Variables: PREFIX (/usr/local), SYSCONFDIR (/etc), UNITDIR (/etc/systemd/system),
#            STATEDIR (/var/lib/goldenhour), VENV (<checkout>/.venv).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
SYSCONFDIR=${SYSCONFDIR:-/etc}
UNITDIR=${UNITDIR:-/etc/systemd/system}
STATEDIR=${STATEDIR:-/var/lib/goldenhour}
VENV=${VENV:-$root/.venv}
bin="$PREFIX/bin/goldenhour"

if [ -z "$DESTDIR" ] && [ "$(id -u)" != 0 ]; then
  echo "install: run as root (or set DESTDIR to stage into a directory)" >&2
  exit 2
fi
if [ ! -x "$VENV/bin/goldenhour" ]; then
  echo "install: $VENV/bin/goldenhour is missing: run 'make setup' first" >&2
  exit 2
fi

# the command
install -d -m 0755 "$DESTDIR$PREFIX/bin"
ln -sfn "$VENV/bin/goldenhour" "$DESTDIR$bin"

# the unit and the drop-in example, pointing at $bin
install -d -m 0755 "$DESTDIR$UNITDIR" "$DESTDIR$PREFIX/share/goldenhour"
for unit in goldenhour.service goldenhour-recorder.service goldenhour-relay.service; do
  sed "s#/usr/local/bin/goldenhour#$bin#g" "$root/systemd/$unit" > "$DESTDIR$UNITDIR/$unit"
  chmod 0644 "$DESTDIR$UNITDIR/$unit"
done
sed "s#/usr/local/bin/goldenhour#$bin#g" "$root/systemd/goldenhour-pre-restart.conf" \
  > "$DESTDIR$PREFIX/share/goldenhour/goldenhour-pre-restart.conf"
chmod 0644 "$DESTDIR$PREFIX/share/goldenhour/goldenhour-pre-restart.conf"

# the config (secrets go beside it: keep the directory root-only)
install -d -m 0750 "$DESTDIR$SYSCONFDIR/goldenhour"
install -m 0640 "$root/config/goldenhour.example.toml" "$DESTDIR$SYSCONFDIR/goldenhour/config.example.toml"
if [ ! -e "$DESTDIR$SYSCONFDIR/goldenhour/config.toml" ]; then
  install -m 0640 "$root/config/goldenhour.example.toml" "$DESTDIR$SYSCONFDIR/goldenhour/config.toml"
fi

# the store and state
install -d -m 0750 "$DESTDIR$STATEDIR" "$DESTDIR$STATEDIR/state"

if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
cat <<MSG
goldenhour installed:
  command   $bin -> $VENV/bin/goldenhour
  units     $UNITDIR/goldenhour.service, $UNITDIR/goldenhour-recorder.service
  relay     $UNITDIR/goldenhour-relay.service (only for the fleet's relay machine; docs/fleet.md)
  drop-in   $PREFIX/share/goldenhour/goldenhour-pre-restart.conf (example for the services to protect)
  config    $SYSCONFDIR/goldenhour/config.toml (all commented; see config.example.toml)
  store     $STATEDIR
Next: put tracker secrets in $SYSCONFDIR/goldenhour/<tracker>.secret (mode 0600), enable them in
config.toml ([webhooks.<tracker>] enabled = true, secret_file = ...), then
  systemctl enable --now goldenhour && curl -s localhost:8787/healthz
and start the flight recorder (every capture then carries the hour before the incident):
  systemctl enable --now goldenhour-recorder && goldenhour history --since 5m
MSG
