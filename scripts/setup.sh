#!/usr/bin/env bash
# One-shot, idempotent set-up of a fresh Debian 12 machine for l7gate:
#   Debian packages (bcc's Python bindings exist only as python3-bpfcc), kernel headers and
#   the /lib/modules links bcc needs, and the project venv (.venv) built from Debian's
#   /usr/bin/python3 with --system-site-packages so that `import bcc` works, and the HTTP
#   proxy's compiled hot path (scripts/build_compiled.py: mypyc, needs gcc + python3-dev).
# Safe to run again: every step checks before it acts. Needs root for apt and the links.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

DEB_PKGS=(python3-bpfcc bpfcc-tools linux-headers-amd64 python3-venv python3-dev
          iproute2 curl bind9-dnsutils dnsmasq-base socat wrk haproxy dnsperf procps iputils-ping
          prometheus iperf3 valgrind gcc
          )

missing=()
for p in "${DEB_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Packages such as prometheus and dnsmasq would start services in the machine's own
  # network namespace; the tests start their own copies inside the sandbox instead.
  blocker=/usr/sbin/policy-rc.d
  added_blocker=0
  if [ ! -e "$blocker" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$blocker" && chmod +x "$blocker" && added_blocker=1
  fi
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  [ "$added_blocker" = 1 ] && rm -f "$blocker"
  if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now prometheus prometheus-node-exporter 2>/dev/null || true
  fi
fi

# bcc needs kernel headers. This kernel ships none and has no CONFIG_IKHEADERS; Debian's
# headers work for the network UAPI once build/ and source/ point at them (ARCHITECTURE.md).
kver=$(uname -r)
mod=/lib/modules/$kver
if [ ! -e "$mod/build/include/generated/autoconf.h" ] && [ ! -e "$mod/build/Makefile" ]; then
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$hdr" ] || [ -z "$common" ]; then
    echo "setup: no Debian kernel headers found under /usr/src" >&2; exit 1
  fi
  mkdir -p "$mod"
  ln -sfn "$hdr" "$mod/build"
  ln -sfn "$common" "$mod/source"
  echo "setup: linked $mod/build -> $hdr, source -> $common"
fi

# bpffs for pinned maps (normally mounted already).
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf || true

if [ ! -x "$VENV/bin/python" ]; then
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
stamp="$VENV/.installed-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -e "$stamp" ]; then
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -e '.[dev]'
  touch "$stamp"
fi
"$VENV/bin/python" -c 'import bcc, yaml, re2, h11, httptools, uvloop, dnslib, prometheus_client, pyroute2' \
  || { echo "setup: venv imports failed" >&2; exit 1; }
# Rebuilt only when a compiled module's source changed (its manifest says which sources).
"$VENV/bin/python" scripts/build_compiled.py 2>&1 | grep -v -e 'warning: Treating generator' \
  -e '_BetaConfiguration' -e 'warnings.warn(msg' || true
why=$(env -u L7GATE_PURE "$VENV/bin/python" -c 'import proxy.http, proxy.compiled as c; print(c.STATUS)')
[ -z "$why" ] || { echo "setup: the compiled hot path is not usable: $why" >&2; exit 1; }
echo "setup: ok ($("$VENV/bin/python" --version), venv $VENV)"
