#!/usr/bin/env bash
# Stop a cluster started by scripts/ceph-rgw-up.sh and remove its directory.
# Usage: scripts/ceph-rgw-down.sh DIR
#
# Signals only the daemons whose pids up.sh recorded, and only while they still run with
# DIR's config (no pid reuse accidents). Order rgw -> osd -> mon: radosgw stalls when the OSD
# is gone first, and the OSD waits for a gone monitor. DOWN_FAST=1 sends SIGKILL instead
# (fine: everything is throwaway). A watchdog started by up.sh exits by itself once DIR is gone.
set -uo pipefail
DIR=${1:?usage: ceph-rgw-down.sh DIR}
[ -d "$DIR/run" ] || { echo "ceph-rgw-down: $DIR is not a cluster directory (no run/)" >&2; exit 1; }
DIR=$(cd "$DIR" && pwd)
SIG=TERM
[ "${DOWN_FAST:-0}" = 1 ] && SIG=KILL
STOPPED=()

# Running = exists and is not a zombie (daemons are reparented to PID 1, which may reap late).
running() { [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
ours() { grep -qF -- "$DIR/ceph.conf" "/proc/$1/cmdline" 2>/dev/null; }

stop_group() { # pid files...
  local pids=() f pid i alive
  for f in "$@"; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    if running "$pid" && ours "$pid"; then kill -"$SIG" "$pid" 2>/dev/null && pids+=("$pid"); fi
  done
  [ ${#pids[@]} = 0 ] && return 0
  for ((i = 0; i < 200; i++)); do # up to 10 s for a clean exit (about 0.2 s usually)
    alive=0
    for pid in "${pids[@]}"; do running "$pid" && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.05
  done
  for pid in "${pids[@]}"; do
    if running "$pid"; then echo "ceph-rgw-down: pid $pid did not exit, sending SIGKILL" >&2; kill -KILL "$pid" 2>/dev/null; fi
  done
  STOPPED+=("${pids[@]}")
}

shopt -s nullglob
stop_group "$DIR"/run/rgw.*.bgpid
stop_group "$DIR"/run/osd.*.bgpid
stop_group "$DIR"/run/mon.*.bgpid
rm -rf "$DIR"
echo "stopped ${STOPPED[*]:-nothing}; removed $DIR"
