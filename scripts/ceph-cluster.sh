#!/usr/bin/env bash
# A throwaway single-node Ceph cluster for volcache's RBD tests and benchmarks: one monitor and
# one OSD on 127.0.0.1, pools of size 1, no authentication. Data lives in the OSD's memory
# (memstore) unless OBJECTSTORE=bluestore (a sparse file under DIR; use it to write GiBs).
#
#   scripts/ceph-cluster.sh start DIR     start it; prints `export CEPH_CONF=DIR/ceph.conf`
#   scripts/ceph-cluster.sh stop DIR      stop exactly the daemons `start` started (pid files)
#   scripts/ceph-cluster.sh run DIR CMD…  start, run CMD with CEPH_CONF set, stop (always)
#
# Env: MON_PORT (default 13300; v1 port MON_PORT+1), POOL (rbd), PG_NUM (8), OBJECTSTORE
# (memstore), CEPH_TIMEOUT (120 s). Needs ceph-mon, ceph-osd, ceph-common (scripts/install-deps.sh).
set -euo pipefail

cmd=${1:-}
dir=$(realpath -m "${2:-}")
[ -n "${2:-}" ] || { echo "usage: $0 start|stop|run DIR [CMD...]" >&2; exit 2; }
MON_PORT=${MON_PORT:-13300}
MON_PORT_V1=$((MON_PORT + 1))
POOL=${POOL:-rbd}
PG_NUM=${PG_NUM:-8}
OBJECTSTORE=${OBJECTSTORE:-memstore}
TIMEOUT=${CEPH_TIMEOUT:-120}

say() { echo "ceph-cluster: $*" >&2; }

# A pid that runs, excluding zombies (orphans are reaped late on some machines).
running() {
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) && [ "$state" != Z ]
}

stop_cluster() {
    local f pid name pids=()
    # The OSD first: it tells the monitor it is going.
    for f in "$dir"/run/osd.*.pid "$dir"/run/mon.*.pid; do
        [ -f "$f" ] || continue
        pid=$(cat "$f"); name=$(basename "$f" .pid)
        case "$(cat "/proc/$pid/comm" 2>/dev/null || true)" in
            ceph-mon | ceph-osd)
                kill -TERM "$pid" 2>/dev/null || true
                for _ in $(seq 100); do running "$pid" || break; sleep 0.1; done
                if running "$pid"; then say "$name (pid $pid) ignored SIGTERM: SIGKILL"; kill -KILL "$pid" || true; fi
                say "stopped $name (pid $pid)"
                ;;
            *) say "$name: pid $pid is not a Ceph daemon any more; left alone" ;;
        esac
        rm -f "$f"
    done
}

start_cluster() {
    command -v ceph-mon >/dev/null || { say "ceph-mon is missing: run scripts/install-deps.sh"; exit 1; }
    if compgen -G "$dir/run/*.pid" >/dev/null; then
        say "$dir has a running cluster (pid files); stop it first"; exit 1
    fi
    for port in "$MON_PORT" "$MON_PORT_V1"; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            say "127.0.0.1:$port is in use; set MON_PORT"; exit 1
        fi
    done
    rm -rf "$dir"
    mkdir -p "$dir"/{mon,osd,log,run}
    local fsid started=$SECONDS
    fsid=$(cat /proc/sys/kernel/random/uuid)
    export CEPH_CONF=$dir/ceph.conf
    : >"$dir/keyring"
    cat >"$CEPH_CONF" <<EOF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$MON_PORT,v1:127.0.0.1:$MON_PORT_V1]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
public network = 127.0.0.0/8
run dir = $dir/run
admin socket = $dir/run/\$name.asok
keyring = $dir/keyring
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 2
mon data avail crit = 1
# Commit monitor changes at once instead of batching them (start-up in ~1 s, not ~8 s).
paxos propose interval = 0.01
paxos min wait = 0.001

[client]
admin socket =
log file = /dev/null

[mon]
pid file = $dir/run/\$name.pid
mon data = $dir/mon
log file = $dir/log/\$name.log
mon cluster log file = $dir/log/cluster.log

[osd]
pid file = $dir/run/\$name.pid
osd data = $dir/osd
log file = $dir/log/\$name.log
osd objectstore = $OBJECTSTORE
memstore device bytes = 8589934592
bluestore block create = true
bluestore block size = 21474836480
bluestore fsck on mkfs = false
bluestore fsck on mount = false
osd memory target = 939524096
osd op num shards = 2
osd op num threads per shard = 1
osd class update on start = false
EOF
    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$MON_PORT,v1:127.0.0.1:$MON_PORT_V1]" \
        "$dir/monmap" >/dev/null
    ceph-mon --mkfs -i a --monmap "$dir/monmap" --keyring /dev/null
    ceph-mon -i a
    local osd_uuid osd_id
    osd_uuid=$(cat /proc/sys/kernel/random/uuid)
    osd_id=$(timeout "$TIMEOUT" ceph osd new "$osd_uuid")
    : >"$dir/osd/keyring"
    ceph-osd -i "$osd_id" --mkfs --osd-uuid "$osd_uuid" --keyring "$dir/osd/keyring" >"$dir/log/osd-mkfs.out" 2>&1 ||
        { cat "$dir/log/osd-mkfs.out" >&2; return 1; }
    ceph-osd -i "$osd_id" --keyring "$dir/osd/keyring" 2>>"$dir/log/osd-start.err"
    local deadline=$((SECONDS + TIMEOUT))
    until ceph osd stat 2>/dev/null | grep -q '1 up.*1 in'; do
        [ $SECONDS -lt $deadline ] || { say "the OSD did not come up"; return 1; }
        sleep 0.2
    done
    ceph osd pool create "$POOL" "$PG_NUM" "$PG_NUM" replicated >/dev/null 2>&1
    # Blocks until the pool's placement groups are active: then the pool is usable.
    timeout "$TIMEOUT" rbd pool init "$POOL"
    say "cluster up in $((SECONDS - started)) s ($OBJECTSTORE, pool '$POOL', mon 127.0.0.1:$MON_PORT)"
}

# Start; on failure show why and stop what was started.
start_or_clean_up() {
    if ! start_cluster; then
        say "start failed; logs in $dir/log"
        tail -n 5 "$dir"/log/*.log >&2 2>/dev/null || true
        stop_cluster
        exit 1
    fi
}

case "$cmd" in
    start)
        start_or_clean_up
        echo "export CEPH_CONF=$dir/ceph.conf"
        ;;
    stop)
        stop_cluster
        ;;
    run)
        shift 2
        [ $# -gt 0 ] || { echo "usage: $0 run DIR CMD..." >&2; exit 2; }
        start_or_clean_up
        trap stop_cluster EXIT
        trap 'exit 130' INT TERM
        CEPH_CONF=$dir/ceph.conf "$@"
        ;;
    *)
        echo "usage: $0 start|stop|run DIR [CMD...]" >&2
        exit 2
        ;;
esac
