#!/usr/bin/env bash
# Set up this checkout on a Debian machine (idempotent), then run a job:
#   bash scripts/dev.sh start [ARGS]   the main job: mount the embedded default (a local S3 server's bucket) at /mnt/objectfs
#   bash scripts/dev.sh test           type-check and run every test
#   bash scripts/dev.sh setup          only install what is missing
set -euo pipefail
cd "$(dirname "$0")/.."

BUN_VERSION=1.4.5
APT_PACKAGES=(libfuse2 libfuse-dev fuse3 build-essential python3 pkg-config git rsync sqlite3 curl ca-certificates
  # a real S3 server for the tests: single-node Ceph RADOS Gateway (scripts/ceph-rgw-up.sh)
  ceph-mon ceph-osd radosgw ceph-common)

log() { printf '\033[1mobjectfs setup:\033[0m %s\n' "$*" >&2; }

need_apt=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$p")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "objectfs setup: missing Debian packages ${need_apt[*]}; run this as root or install them with apt-get" >&2
    exit 1
  fi
  log "installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null </dev/null
fi

if ! command -v bun >/dev/null 2>&1 || [ "$(bun --version 2>/dev/null)" != "$BUN_VERSION" ]; then
  log "installing bun $BUN_VERSION from the npm registry"
  npm install -g --silent "bun@$BUN_VERSION" >/dev/null 2>&1 || npm install -g "bun@$BUN_VERSION"
fi

# Native addons (fuse-native, classic-level) build against the system's Node headers.
export npm_config_nodedir=${npm_config_nodedir:-/usr}
stale=0
for f in bun.lock package.json patches/*.patch; do [ "$f" -nt node_modules/.objectfs-installed ] && stale=1; done
if [ ! -f node_modules/.objectfs-installed ] || [ "$stale" = 1 ]; then
  # A changed patch is applied only to a fresh copy of its package.
  [ -d node_modules/fuse-native ] && [ "$stale" = 1 ] && rm -rf node_modules/fuse-native
  log "installing dependencies from bun.lock"
  bun install --frozen-lockfile
  touch node_modules/.objectfs-installed
fi

job=${1:-setup}
shift || true
case "$job" in
  setup) ;;
  start)
    # The main job: mount the embedded default at /mnt/objectfs. Without OBJECTFS_SOURCE
    # (an s3://BUCKET[/PREFIX] of a real S3), that is the bucket "objectfs" of a local S3
    # server (objectfs dev-s3, kept running in the background) mounted through the journal.
    mnt=${OBJECTFS_MOUNTPOINT:-/mnt/objectfs}
    mkdir -p "$mnt"
    if [ -n "${OBJECTFS_SOURCE:-}" ]; then
      source=$OBJECTFS_SOURCE
    else
      port=${OBJECTFS_DEV_S3_PORT:-9000}
      if ! out=$(bun src/main.ts dev-s3 --detach --port "$port" 2>&1) && ! grep -q "already runs" <<<"$out"; then
        echo "$out" >&2
        echo "objectfs start: the local S3 server did not start; free port $port or set OBJECTFS_DEV_S3_PORT" >&2
        exit 1
      fi
      export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-S3RVER} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-S3RVER} AWS_REGION=${AWS_REGION:-us-east-1}
      export OBJECTFS_ENDPOINT=${OBJECTFS_ENDPOINT:-http://127.0.0.1:$port}
      source=s3://objectfs
      echo "objectfs start: local S3 server at $OBJECTFS_ENDPOINT (objects in ${XDG_DATA_HOME:-$HOME/.local/share}/objectfs/dev-s3)"
    fi
    bun src/main.ts mount "$source" "$mnt" "$@"
    data=${XDG_DATA_HOME:-$HOME/.local/share}/objectfs/$(echo "${mnt#/}" | sed 's/[^A-Za-z0-9._-]\{1,\}/_/g')
    cat <<MSG

Look inside:  ls -la $mnt; echo hello > $mnt/hello.txt; cat $mnt/hello.txt
In S3:        bun src/main.ts sync $mnt; bun src/main.ts status $mnt
Unmount:      bun src/main.ts unmount $mnt   (the journal stays in $data; mount again to continue)
Check it:     bun src/main.ts fsck --data-dir $data   (after unmounting)
MSG
    ;;
  test)
    bun x tsc --noEmit -p .
    set +e
    # bunfig.toml cannot set the per-test timeout; real mounts and servers need more than 5 s.
    # A log of this run only (two runs at once on one machine must not count each other's).
    log_file=$(mktemp /tmp/objectfs-test.XXXXXX.log)
    bun test --timeout 120000 "$@" 2>&1 | tee "$log_file"
    rc=${PIPESTATUS[0]}
    set -e
    pass=$(grep -Eo '^ *[0-9]+ pass$' "$log_file" | tail -1 | grep -Eo '[0-9]+' || echo 0)
    fail=$(grep -Eo '^ *[0-9]+ fail$' "$log_file" | tail -1 | grep -Eo '[0-9]+' || echo 0)
    echo "bun test: $pass passed, $fail failed (log: $log_file)"
    exit "$rc"
    ;;
  *) echo "usage: bash scripts/dev.sh start|test|setup" >&2; exit 2 ;;
esac
