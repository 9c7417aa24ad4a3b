#!/usr/bin/env bash
# System packages the test suite needs beyond Python: Node.js (the browser
# client's unit tests), Debian's Chromium (the real-browser test; never a
# browser download), haproxy and promtool (they validate deploy/), curl (the
# README's examples are run as written). `make test`
# runs this first; it installs only what is missing, with apt-get as root, and
# otherwise says what to install.
set -euo pipefail
missing=()
command -v node >/dev/null || missing+=(nodejs)
[ -x /usr/bin/chromium ] || missing+=(chromium fonts-dejavu-core)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v promtool >/dev/null || missing+=(prometheus)
command -v curl >/dev/null || missing+=(curl)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "missing system packages: ${missing[*]}" >&2
  echo "install them with: sudo make system-deps   (Debian/Ubuntu)" >&2
  exit 1
fi

# keep apt from starting the haproxy and prometheus services it installs
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  created_policy=1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
[ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
exit 0
