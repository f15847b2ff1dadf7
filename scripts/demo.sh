#!/usr/bin/env bash
# tether in one command: a local registry with a few images, a bootc deployment root that logically binds
# them, one sync into a scratch store, and podman reading the result. Everything lives under $DEMO_DIR
# (default /var/tmp/tether-demo) and is removed on exit (KEEP=1 keeps the store to poke at). Re-runnable.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

[ "${SKIP_INSTALL:-0}" = 1 ] || bash scripts/install-deps.sh   # SKIP_INSTALL=1: use the current environment
if [ -x .venv/bin/python ]; then export PATH="$REPO/.venv/bin:$PATH"; fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

DEMO_DIR=${DEMO_DIR:-/var/tmp/tether-demo}
RUNROOT=/tmp/tether-demo-run          # podman wants a short run root
STORE=$DEMO_DIR/storage               # stands in for /usr/lib/bootc/storage
DEPLOY=$DEMO_DIR/deploy               # stands in for a deployment's root (ostree checkout)
REGDIR=$DEMO_DIR/registry

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

stop_registry() {
  if [ -f "$REGDIR/pid" ]; then
    kill "$(cat "$REGDIR/pid")" 2>/dev/null || true
    rm -f "$REGDIR/pid"
  fi
}
cleanup() {
  stop_registry
  if [ "${KEEP:-0}" != 1 ]; then
    umount -R -l "$STORE/overlay" "$RUNROOT" 2>/dev/null || true
    rm -rf "$DEMO_DIR" "$RUNROOT"
  else
    echo "kept $STORE (podman --root $STORE --runroot $RUNROOT images)"
  fi
}
stop_registry                          # a previous run killed hard
rm -rf "$DEMO_DIR" "$RUNROOT"
trap cleanup EXIT
mkdir -p "$REGDIR/data" "$STORE" "$RUNROOT" "$DEPLOY"

say "start a local docker-registry on a free 127.0.0.1 port"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
HOST=127.0.0.1:$PORT
cat > "$REGDIR/config.yml" <<EOF
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $REGDIR/data
http:
  addr: $HOST
  secret: tether-demo
EOF
docker-registry serve "$REGDIR/config.yml" >"$REGDIR/log" 2>&1 &
echo $! > "$REGDIR/pid"
for _ in $(seq 100); do curl -fsS "http://$HOST/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "http://$HOST/v2/" >/dev/null
echo "registry at http://$HOST"

say "push three images sharing a base layer"
mapfile -t IMAGES < <(python -m tests.harness.demo_seed "$HOST")
printf '  %s\n' "${IMAGES[@]}"

say "a deployment root that logically binds them (usr/lib/bootc/bound-images.d)"
QUADLETS=$DEPLOY/usr/share/containers/systemd
BOUND=$DEPLOY/usr/lib/bootc/bound-images.d
mkdir -p "$QUADLETS" "$BOUND"
for ref in "${IMAGES[@]}"; do
  name=${ref##*/}; name=${name%%:*}
  if [ "$name" = db ]; then
    printf '[Container]\nImage=%s\nPublishPort=5432:5432\n' "$ref" > "$QUADLETS/$name.container"
    ln -sf "/usr/share/containers/systemd/$name.container" "$BOUND/$name.container"
  else
    printf '[Image]\nImage=%s\nTLSVerify=false\n' "$ref" > "$QUADLETS/$name.image"
    ln -sf "/usr/share/containers/systemd/$name.image" "$BOUND/$name.image"
  fi
done
(cd "$DEPLOY" && find usr/lib/bootc -type l -printf '  %p -> %l\n')

REGCONF=$DEMO_DIR/registries.conf
printf '[[registry]]\nlocation = "%s"\ninsecure = true\n' "$HOST" > "$REGCONF"
printf '{}' > "$DEMO_DIR/auth.json"
# --root is the store for every command (as podman's); a deployment's file tree is --deployment-root.
STORE_OPTS=(--root "$STORE" --runroot "$RUNROOT" --storage-driver overlay)
NET=(--registries-conf "$REGCONF" --authfile "$DEMO_DIR/auth.json" --tls-verify=false)
COMMON=("${STORE_OPTS[@]}" "${NET[@]}")
SYNC=(tether bound sync --deployment-root "$DEPLOY" "${STORE_OPTS[@]}" "${NET[@]}" --progress plain)

say "the images the deployment binds (tether bound list, as bootc image list --type logical)"
tether bound list --deployment-root "$DEPLOY"

say "not ready yet: tether bound status --check gates the reboot"
tether bound status --deployment-root "$DEPLOY" "${STORE_OPTS[@]}" --check "$DEPLOY" || echo "(exit $?: not ready)"

say "sync the bound images into the store, all at once (${SYNC[*]:0:3})"
"${SYNC[@]}"

say "again: nothing to do"
time "${SYNC[@]}"

say "tether pull --policy newer: one manifest request per image, nothing else"
time tether pull "${COMMON[@]}" --progress plain "${IMAGES[@]}"

say "ready: every bound image committed"
tether bound status --deployment-root "$DEPLOY" "${STORE_OPTS[@]}"
tether bound status --deployment-root "$DEPLOY" "${STORE_OPTS[@]}" --check "$DEPLOY" && echo "(exit 0: may reboot)"

say "tether images"
tether "${STORE_OPTS[@]}" images   # podman's global options go before the command too

say "podman reads the same store"
podman --root "$STORE" --runroot "$RUNROOT" --storage-driver overlay images
podman --root "$STORE" --runroot "$RUNROOT" --storage-driver overlay image inspect \
  --format '{{.RepoTags}} {{len .RootFS.Layers}} layers, digest {{.Digest}}' "${IMAGES[0]}"

say "podman runs a bound image with the store as an additional image store, as bootc hosts use it"
EMPTY=$DEMO_DIR/host-storage
# This sandbox's hybrid cgroups and rlimits need runc + cgroupfs and no default ulimits; a real host does not.
printf '[containers]\ndefault_ulimits = []\n' > "$DEMO_DIR/containers.conf"
echo "+ podman --storage-opt additionalimagestore=$STORE run --rm ${IMAGES[0]}"
CONTAINERS_CONF=$DEMO_DIR/containers.conf podman --root "$EMPTY" --runroot "$RUNROOT-host" \
  --runtime runc --cgroup-manager cgroupfs --storage-opt "additionalimagestore=$STORE" \
  run --rm --net=none "${IMAGES[0]}" \
  || echo "(podman run is not permitted on this machine)"
umount -R -l "$EMPTY/overlay" "$RUNROOT-host" 2>/dev/null || true
rm -rf "$RUNROOT-host"
