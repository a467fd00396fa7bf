#!/usr/bin/env bash
# A one-machine Slurm cluster from Debian's packages, for trying faultline's array jobs and for
# tests/slurm/e2e.sh: munged, slurmctld and slurmd on this host with its cores, every file
# (key, sockets, spool, logs, slurm.conf) under one state directory, ports of its own, so it
# touches no system Slurm or munge. Needs root (the daemons run as root, munged as munge).
#
#   eval "$(deploy/slurm/local-cluster.sh start /tmp/faultline-slurm)"   # prints SLURM_CONF=...
#   sinfo; sbatch ...
#   deploy/slurm/local-cluster.sh stop /tmp/faultline-slurm
#   deploy/slurm/local-cluster.sh logs /tmp/faultline-slurm
#
# `start` installs slurm-wlm and munge with apt-get when they are missing, waits (at most
# SLURM_START_TIMEOUT seconds, 60 by default) for the node to be idle, and on failure prints
# the daemons' logs, stops what it started and exits 1. `stop` ends the daemons by the process
# ids in their pid files, never by name.
set -euo pipefail

command=${1:?usage: local-cluster.sh start|stop|logs STATE_DIR}
state=${2:?usage: local-cluster.sh start|stop|logs STATE_DIR}
ctld_port=${SLURMCTLD_PORT:-16817}
slurmd_port=${SLURMD_PORT:-16818}
timeout=${SLURM_START_TIMEOUT:-60}

log() { echo "local-cluster: $*" >&2; }

logs() {
    for f in "$state"/log/*.log; do
        [ -f "$f" ] || continue
        echo "----- $f (last 40 lines)" >&2
        tail -n 40 "$f" >&2
    done
}

stop() {
    for daemon in slurmd slurmctld munged; do
        pidfile="$state/run/$daemon.pid"
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v munged >/dev/null; then
        return
    fi
    command -v apt-get >/dev/null || { log "slurm-wlm and munge are missing, and there is no apt-get"; exit 1; }
    sudo=$(command -v sudo || true)
    [ "$(id -u)" = 0 ] && sudo=
    log "installing slurm-wlm and munge"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_conf() {
    local host cpus
    host=$(hostname -s)
    cpus=$(nproc)
    cat >"$state/slurm.conf" <<EOF
ClusterName=faultline-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$state/run/munge.socket
CredType=cred/munge
StateSaveLocation=$state/spool/ctld
SlurmdSpoolDir=$state/spool/d
SlurmctldPidFile=$state/run/slurmctld.pid
SlurmdPidFile=$state/run/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    # slurmd reads cgroup.conf beside slurm.conf on some builds even with task/none.
    echo "CgroupPlugin=autodetect" >"$state/cgroup.conf"
}

start_munge() {
    install -d -m 700 -o munge -g munge "$state/munge"
    dd if=/dev/urandom of="$state/munge/munge.key" bs=1024 count=1 status=none
    chown munge:munge "$state/munge/munge.key"
    chmod 400 "$state/munge/munge.key"
    chown munge:munge "$state/run"
    runuser -u munge -- munged --force \
        --key-file="$state/munge/munge.key" \
        --socket="$state/run/munge.socket" \
        --pid-file="$state/run/munged.pid" \
        --log-file="$state/log/munged.log" \
        --seed-file="$state/munge/munged.seed"
    chmod 755 "$state/run"
}

wait_idle() {
    local host deadline
    host=$(hostname -s)
    deadline=$((SECONDS + timeout))
    while [ $SECONDS -lt $deadline ]; do
        state_now=$(SLURM_CONF="$state/slurm.conf" timeout 5 sinfo -h -n "$host" -o %t 2>/dev/null || true)
        case "$state_now" in
            idle*|mix*|alloc*) return 0 ;;
        esac
        sleep 1
    done
    log "the node was not idle within ${timeout}s (sinfo says: ${state_now:-nothing})"
    return 1
}

start() {
    install_packages
    stop
    rm -rf "$state"
    mkdir -p "$state"/{run,log,spool/ctld,spool/d}
    chmod 755 "$state" "$state/log"
    touch "$state/log/munged.log"
    chown munge:munge "$state/log/munged.log"
    write_conf
    start_munge
    export SLURM_CONF="$state/slurm.conf"
    if ! timeout 30 slurmctld -c || ! timeout 30 slurmd -c || ! wait_idle; then
        log "the cluster did not start; the daemons' logs follow"
        logs
        stop
        exit 1
    fi
    log "cluster up: $(hostname -s), $(nproc) CPUs; export SLURM_CONF=$state/slurm.conf"
    echo "export SLURM_CONF=$state/slurm.conf"
}

case "$command" in
    start) start ;;
    stop) stop ;;
    logs) logs ;;
    *) log "unknown command $command (start, stop, logs)"; exit 2 ;;
esac
