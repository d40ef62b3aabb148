#!/usr/bin/env bash
# Start a throwaway single-node Ceph cluster serving S3 on loopback, for tests and trying
# ObjectFS against a production S3 implementation: one monitor, one memstore OSD (data in
# RAM), one RADOS Gateway (beast frontend), auth none, bound to 127.0.0.1 only.
#
# Usage: scripts/ceph-rgw-up.sh DIR        (DIR must not exist or be empty; it holds
#                                           config, logs, pid files and s3.env)
#        scripts/ceph-rgw-down.sh DIR      stops the daemons and removes DIR
#
# Environment (ports must be free; give each cluster its own to run several side by side):
#   RGW_PORT      S3 endpoint port                          default 40180
#   MON_V2_PORT   monitor msgr2 port                        default 40100
#   MON_V1_PORT   monitor legacy port                       default 40101
#   MS_PORT_MIN   first port daemons may bind (the OSD      default 40200
#   MS_PORT_MAX   binds 8), last port                       default 40231
#   MEMSTORE_BYTES   OSD capacity (RAM used only by data)   default 1 GiB
#   S3_ACCESS_KEY / S3_SECRET_KEY                           default TESTACCESSKEY / TESTSECRETKEY123
#   WATCH_PID     if set, a watchdog stops the cluster when this process exits
#
# Prints the lines of DIR/s3.env (S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
# AWS_REGION) and "ready in N ms". Exit status 3: the Ceph packages are missing.
#
# Needs: apt-get install -y --no-install-recommends ceph-mon ceph-osd radosgw ceph-common
set -euo pipefail

APT_HINT="apt-get install -y --no-install-recommends ceph-mon ceph-osd radosgw ceph-common"
missing=()
for cmd in ceph-mon ceph-osd radosgw radosgw-admin ceph ceph-authtool monmaptool; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "ceph-rgw-up: Ceph is not installed (missing ${missing[*]}); install it with: $APT_HINT" >&2
  exit 3
fi

DIR=${1:?usage: ceph-rgw-up.sh DIR}
RGW_PORT=${RGW_PORT:-40180}
MON_V2_PORT=${MON_V2_PORT:-40100}
MON_V1_PORT=${MON_V1_PORT:-40101}
MS_PORT_MIN=${MS_PORT_MIN:-40200}
MS_PORT_MAX=${MS_PORT_MAX:-40231}
MEMSTORE_BYTES=${MEMSTORE_BYTES:-1073741824}
AK=${S3_ACCESS_KEY:-TESTACCESSKEY}
SK=${S3_SECRET_KEY:-TESTSECRETKEY123}
HERE=$(cd "$(dirname "$0")" && pwd)
T0=${EPOCHREALTIME/./}

if [ -e "$DIR" ] && [ -n "$(ls -A "$DIR" 2>/dev/null)" ]; then
  echo "ceph-rgw-up: $DIR is not empty; give a new directory" >&2
  exit 2
fi
mkdir -p "$DIR"/{mon/a,osd/0,rgw,run,log,crash}
DIR=$(cd "$DIR" && pwd)
CONF=$DIR/ceph.conf
trap 'echo "ceph-rgw-up: failed at line $LINENO; logs in $DIR/log; clean up with: $HERE/ceph-rgw-down.sh $DIR" >&2' ERR

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$RGW_PORT" "$MON_V2_PORT" "$MON_V1_PORT"; do
  port_free "$p" || { echo "ceph-rgw-up: port $p on 127.0.0.1 is in use; choose other ports (RGW_PORT, MON_V2_PORT, MON_V1_PORT)" >&2; exit 2; }
done

FSID=$(cat /proc/sys/kernel/random/uuid)
OSD_UUID=$(cat /proc/sys/kernel/random/uuid)
cat > "$CONF" <<EOF
[global]
fsid = $FSID
mon host = [v2:127.0.0.1:$MON_V2_PORT,v1:127.0.0.1:$MON_V1_PORT]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv4 = true
ms bind ipv6 = false
ms bind port min = $MS_PORT_MIN
ms bind port max = $MS_PORT_MAX
auth cluster required = none
auth service required = none
auth client required = none
auth supported = none
keyring = $DIR/keyring
run dir = $DIR/run
admin socket = $DIR/run/\$name.asok
pid file = $DIR/run/\$name.pid
log file = $DIR/log/\$name.log
crash dir = $DIR/crash
log to stderr = false
err to stderr = true
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
mgr initial modules =

[mon]
mon data = $DIR/mon/\$id
# Fast osdmap proposals (pool creation by rgw, osd boot): start-up 13 s -> ~3 s.
paxos propose interval = 0.1
paxos min wait = 0.01
mon cluster log file = $DIR/log/cluster.log

[osd]
osd data = $DIR/osd/\$id
osd objectstore = memstore
memstore device bytes = $MEMSTORE_BYTES
osd crush update on start = true
osd class load list = *
osd class default list = *

[client.rgw.a]
rgw data = $DIR/rgw
# tcp_nodelay: without it every response with a body waits ~40 ms for a delayed ACK (Nagle).
rgw frontends = beast endpoint=127.0.0.1:$RGW_PORT tcp_nodelay=1
rgw dns name = localhost
# radosgw defaults to ms_mon_client_mode = secure, which never works with auth none.
ms mon client mode = crc
log file = $DIR/log/rgw.log
EOF

CEPH=(ceph -c "$CONF" --connect-timeout 20)
start_daemon() { # name cmd...: detached, output to the log dir, pid recorded for ceph-rgw-down.sh
  local name=$1; shift
  setsid nohup "$@" -f >"$DIR/log/$name.out" 2>&1 </dev/null &
  echo $! > "$DIR/run/$name.bgpid"
}
wait_port() { # port seconds what
  local i
  for ((i = 0; i < $2 * 20; i++)); do port_free "$1" || return 0; sleep 0.05; done
  echo "ceph-rgw-up: $3 did not listen on 127.0.0.1:$1 within $2 s; logs in $DIR/log" >&2
  return 1
}
step() { [ "${CEPH_RGW_TIMING:-0}" = 1 ] && echo "$(( (${EPOCHREALTIME/./} - T0) / 1000 )) ms: $*" >&2; return 0; }

if [ -n "${WATCH_PID:-}" ]; then
  # Stops the cluster when the process that wanted it is gone (a test run killed mid-way).
  setsid nohup bash -c 'while kill -0 "$1" 2>/dev/null && [ -d "$2/run" ]; do sleep 1; done; [ -d "$2/run" ] && "$3" "$2"' \
    ceph-rgw-watchdog "$WATCH_PID" "$DIR" "$HERE/ceph-rgw-down.sh" >/dev/null 2>&1 </dev/null &
  echo $! > "$DIR/run/watchdog.pid"
fi

# --- monitor ---
ceph-authtool --create-keyring "$DIR/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool "$DIR/keyring" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' \
  --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
monmaptool --create --fsid "$FSID" \
  --addv a "[v2:127.0.0.1:$MON_V2_PORT,v1:127.0.0.1:$MON_V1_PORT]" "$DIR/monmap" >/dev/null
ceph-mon -c "$CONF" -i a --mkfs --monmap "$DIR/monmap" --keyring "$DIR/keyring" >"$DIR/log/mon-mkfs.out" 2>&1
start_daemon mon.a ceph-mon -c "$CONF" -i a
wait_port "$MON_V2_PORT" 30 "ceph-mon"
step "mon listening"

# --- osd (memstore) ---
OSD_ID=$("${CEPH[@]}" osd new "$OSD_UUID")
step "osd $OSD_ID created"
echo "$OSD_UUID" > "$DIR/osd/$OSD_ID/fsid"
ceph-osd -c "$CONF" -i "$OSD_ID" --mkfs --osd-uuid "$OSD_UUID" >"$DIR/log/osd-mkfs.out" 2>&1
start_daemon "osd.$OSD_ID" ceph-osd -c "$CONF" -i "$OSD_ID"
step "osd started"

# --- radosgw: starts while the OSD boots; it creates its pools once the OSD is up ---
start_daemon rgw.a radosgw -c "$CONF" -n client.rgw.a
wait_port "$RGW_PORT" 120 "radosgw"
step "rgw listening"
for ((i = 0; i < 600; i++)); do
  curl -s -o /dev/null "http://127.0.0.1:$RGW_PORT/" && break
  sleep 0.05
done
curl -sf -o /dev/null "http://127.0.0.1:$RGW_PORT/" || { echo "ceph-rgw-up: radosgw does not answer on 127.0.0.1:$RGW_PORT; logs in $DIR/log" >&2; exit 1; }
step "rgw answering"

# --- S3 user ---
radosgw-admin -c "$CONF" -n client.admin user create --uid=test --display-name="Test User" \
  --access-key="$AK" --secret-key="$SK" >"$DIR/log/user-create.out" 2>&1
step "user created"
T1=${EPOCHREALTIME/./}

cat > "$DIR/s3.env" <<EOF
export CEPH_DIR=$DIR
export CEPH_CONF=$CONF
export S3_ENDPOINT=http://127.0.0.1:$RGW_PORT
export AWS_ACCESS_KEY_ID=$AK
export AWS_SECRET_ACCESS_KEY=$SK
export AWS_REGION=us-east-1
EOF
cat "$DIR/s3.env"
echo "ready in $(( (T1 - T0) / 1000 )) ms"
