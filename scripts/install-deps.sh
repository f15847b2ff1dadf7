#!/usr/bin/env bash
# Installs what tether's demo, tests and benchmarks need on a fresh Debian 12 machine (as root), idempotently:
# the real container tools (docker-registry, podman, skopeo, buildah, ostree) and a Python venv in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(docker-registry podman skopeo buildah ostree fuse-overlayfs uidmap apache2-utils openssl gnupg gpgv
      runc busybox-static tar gzip zstd python3 python3-venv python3-pip curl ca-certificates procps
      rpm man-db systemd pigz iproute2 python3-gi gir1.2-glib-2.0 strace)
# rpm/man-db: packaging and man-page tests; systemd-analyze: tests/test_bound_systemd.py; pigz, iproute2: benchmarks;
# python3-gi: tests/test_gvariant.py checks the staged-deployment parser against GLib; strace:
# tests/test_hermetic_subprocess.py traces tether children for reads of the host's configuration
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: apt-get install ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.tether-deps
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$stamp"
fi
