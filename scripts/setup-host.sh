#!/usr/bin/env bash
# Installs what goldenhour and its test suite need on a Debian host, only what is missing.
#   scripts/setup-host.sh runtime   - tools the collectors use (bcc, headers, elfutils, conntrack...)
#   scripts/setup-host.sh test      - runtime + what the tests use (JDK, Node, chromium, iproute2...)
# Safe to run again: it asks dpkg first and calls apt-get only for missing packages.
set -euo pipefail
want=${1:-runtime}

runtime_pkgs=(python3 python3-venv python3-bpfcc elfutils conntrack gdb iproute2 procps kmod zstd bpftool delve)
# atop: bench/bench_recorder.py measures it beside the flight recorder (the same interval and host)
# nginx, openssl: tests/daemon/test_production_setup.py runs docs/production.md's TLS proxy
test_pkgs=(openjdk-17-jdk-headless nodejs chromium iptables nftables strace gcc libc6-dev wrk systemd util-linux golang-go atop
           nginx openssl)

pkgs=("${runtime_pkgs[@]}")
[ "$want" = test ] && pkgs+=("${test_pkgs[@]}")

missing=()
for p in "${pkgs[@]}"; do
  # nodejs may come from elsewhere (a node binary on PATH is enough)
  if [ "$p" = nodejs ] && command -v node >/dev/null 2>&1; then continue; fi
  if [ "$p" = nginx ] && command -v nginx >/dev/null 2>&1; then continue; fi
  if [ "$p" = openjdk-17-jdk-headless ] && command -v jcmd >/dev/null 2>&1 && command -v javac >/dev/null 2>&1; then continue; fi
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

# Kernel headers for bcc: only where the running kernel has none of its own.
rel=$(uname -r)
need_headers=0
[ -e "/lib/modules/$rel/build" ] || need_headers=1
if [ $need_headers = 1 ] && ! ls -d /usr/src/linux-headers-*-amd64 >/dev/null 2>&1; then
  if apt-cache policy "linux-headers-$rel" 2>/dev/null | grep -q Candidate: && \
     ! apt-cache policy "linux-headers-$rel" | grep -q "Candidate: (none)"; then
    missing+=("linux-headers-$rel")
  else
    missing+=(linux-headers-amd64)
  fi
fi

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup-host: missing Debian packages ${missing[*]}; run as root to install them" >&2
    exit 0
  fi
  echo "setup-host: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # nginx is a test tool (a test runs docs/production.md's TLS proxy through its own nginx on a loopback
  # port): its package must not start, or leave enabled, a web server on port 80 of this machine
  policy=0
  if [[ " ${missing[*]} " == *" nginx "* ]] && [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d && policy=1
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ $policy = 1 ] && rm -f /usr/sbin/policy-rc.d
  if [[ " ${missing[*]} " == *" nginx "* ]] && [ -d /run/systemd/system ]; then
    systemctl disable --now nginx.service >/dev/null 2>&1 || true
  fi
fi

if [ ! -e "/lib/modules/$rel/build" ] && [ "$(id -u)" = 0 ]; then
  # The running kernel ships no headers: use the distribution's nearest ones.
  amd64=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$amd64" ] && [ -n "$common" ]; then
    mkdir -p "/lib/modules/$rel"
    ln -sfn "$amd64" "/lib/modules/$rel/build"
    ln -sfn "$common" "/lib/modules/$rel/source"
    echo "setup-host: kernel $rel has no headers; linked $amd64 (build) and $common (source)"
  fi
fi
exit 0
