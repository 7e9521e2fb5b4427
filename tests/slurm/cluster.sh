#!/usr/bin/env bash
# A real one-node SLURM cluster for tests/test_slurm.py: Debian's slurmctld, slurmd and munge,
# one node that is controller and compute node, two partitions and two fake GPUs (gres backed
# by /dev/null and /dev/zero). Needs root. Started daemons are stopped by the PIDs they wrote, never by name.
#
#   cluster.sh install   install the packages with apt-get when a command is missing
#   cluster.sh up        write /etc/slurm/{slurm,gres}.conf, start munged, slurmctld, slurmd
#   cluster.sh down      cancel jobs, stop the three daemons by PID, remove the config
#
# Environment: LDMPROBE_SLURM_STATE (spool, logs, PID files; default /tmp/ldmprobe-slurm),
# LDMPROBE_GPU_PARTITION / LDMPROBE_CPU_PARTITION / LDMPROBE_GPU_MODEL name the partitions and
# the GPU type, as the profile and rules/common.smk read them. Exit status 3: this machine
# cannot host the cluster (not root, no apt-get); the message says why.
set -euo pipefail

STATE=${LDMPROBE_SLURM_STATE:-/tmp/ldmprobe-slurm}
GPU_PARTITION=${LDMPROBE_GPU_PARTITION:-gpu}
CPU_PARTITION=${LDMPROBE_CPU_PARTITION:-cpu}
GPU_MODEL=${LDMPROBE_GPU_MODEL:-fake}
CONF_DIR=/etc/slurm
MARKER="# ldmprobe test cluster, written by tests/slurm/cluster.sh"
PACKAGES=(slurmctld slurmd slurm-client munge)
COMMANDS=(slurmctld slurmd sbatch squeue scontrol sinfo munged)
NODE=$(hostname -s)

say() { echo "cluster.sh: $*" >&2; }
cannot() {
    say "cannot run a SLURM cluster here: $*"
    exit 3
}

need_root() { [[ $(id -u) == 0 ]] || cannot "needs root (daemons, /etc/slurm), running as $(id -un)"; }

missing_commands() {
    local missing=()
    for command in "${COMMANDS[@]}"; do
        PATH=$PATH:/usr/sbin command -v "$command" >/dev/null || missing+=("$command")
    done
    echo "${missing[@]}"
}

install() {
    [[ -z $(missing_commands) ]] && return 0
    need_root
    command -v apt-get >/dev/null || cannot "missing $(missing_commands) and no apt-get to install them"
    say "installing ${PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d keeps the packages' init scripts from starting daemons with their own config.
    local policy=/usr/sbin/policy-rc.d placed=
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && placed=1
    fi
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
    [[ -n $placed ]] && rm -f "$policy"
    [[ -z $(missing_commands) ]] || cannot "still missing after install: $(missing_commands)"
}

pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_config() {
    if [[ -e $CONF_DIR/slurm.conf ]] && ! head -1 "$CONF_DIR/slurm.conf" | grep -qF "$MARKER"; then
        cannot "$CONF_DIR/slurm.conf exists and is not ours; refusing to overwrite a real cluster's config"
    fi
    mkdir -p "$CONF_DIR" "$STATE/ctld" "$STATE/d"
    # The executor plugin drops SLURM_* variables (SLURM_CONF too) before its inner srun, so the
    # config must be at the compiled-in default path.
    cat >"$CONF_DIR/slurm.conf" <<CONF
$MARKER
ClusterName=ldmprobe
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
MpiDefault=none
ReturnToService=2
# squeue (the profile's status command) sees a finished job for MinJobAge seconds; the
# executor wants at least three times its first status-check delay.
MinJobAge=600
# Declared CPUs and memory are bookkeeping only (no cgroups). 4 CPUs fit one GPU job (4 per GPU)
# or one 4-thread probe job; more would only oversubscribe a small test machine.
SlurmdParameters=config_overrides
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=4 RealMemory=64000 Gres=gpu:$GPU_MODEL:2 State=UNKNOWN
PartitionName=$GPU_PARTITION Nodes=$NODE MaxTime=INFINITE State=UP
PartitionName=$CPU_PARTITION Nodes=$NODE MaxTime=INFINITE State=UP
CONF
    # A count-only gres line leaves the node INVAL; a character device per GPU makes each one
    # schedulable and sets CUDA_VISIBLE_DEVICES in the job.
    cat >"$CONF_DIR/gres.conf" <<CONF
$MARKER
AutoDetect=off
NodeName=$NODE Name=gpu Type=$GPU_MODEL File=/dev/null
NodeName=$NODE Name=gpu Type=$GPU_MODEL File=/dev/zero
CONF
}

start_munge() {
    if [[ -S /run/munge/munge.socket.2 ]] && munge -n </dev/null >/dev/null 2>&1; then
        say "using the munged already running"
        return
    fi
    [[ -s /etc/munge/munge.key ]] || runuser -u munge -- mungekey --create
    mkdir -p /run/munge "$STATE/munge"
    chown munge:munge /run/munge "$STATE/munge"
    runuser -u munge -- munged --pid-file="$STATE/munge/munged.pid" \
        --log-file="$STATE/munge/munged.log" --seed-file="$STATE/munge/munged.seed"
    wait_for "munged" 10 munge -n </dev/null
}

wait_for() {
    local what=$1 seconds=$2
    shift 2
    for ((i = 0; i < seconds * 5; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    say "$what did not come up within ${seconds}s"
    return 1
}

node_idle() { [[ $(sinfo -h -n "$NODE" -o %T | sort -u) == idle ]]; }

up() {
    need_root
    [[ -z $(missing_commands) ]] || cannot "missing commands: $(missing_commands) (run: $0 install)"
    if pid_alive "$STATE/slurmctld.pid" || pid_alive "$STATE/slurmd.pid"; then
        say "daemons of an earlier run are alive; stopping them first"
        down
    fi
    local foreign
    foreign=$(pgrep -x slurmctld; pgrep -x slurmd) || true
    [[ -z $foreign ]] || cannot "SLURM daemons not started by this script are running (PIDs $foreign)"
    # A fresh state: job ids, logs and spool of an earlier run would confuse the checks.
    rm -rf "$STATE/ctld" "$STATE/d" "$STATE"/*.log
    write_config
    start_munge
    # -c: start from an empty job list even if an earlier run left state behind.
    slurmctld -c
    wait_for slurmctld 20 scontrol ping
    slurmd -N "$NODE"
    if ! wait_for "node $NODE" 30 node_idle; then
        sinfo -N -l >&2 || true
        tail -20 "$STATE/slurmctld.log" "$STATE/slurmd.log" >&2 || true
        down
        exit 1
    fi
    say "up: node $NODE, partitions $GPU_PARTITION (2 $GPU_MODEL GPUs) and $CPU_PARTITION; state in $STATE"
}

stop_pidfile() {
    local name=$1 file=$2
    pid_alive "$file" || return 0
    local pid
    pid=$(cat "$file")
    kill -TERM "$pid"
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.2
    done
    say "$name (PID $pid) ignored SIGTERM for 10s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

down() {
    if pid_alive "$STATE/slurmctld.pid"; then
        local jobs
        jobs=$(squeue -h -o %i 2>/dev/null || true)
        [[ -z $jobs ]] || scancel $jobs || true
    fi
    stop_pidfile slurmd "$STATE/slurmd.pid"
    stop_pidfile slurmctld "$STATE/slurmctld.pid"
    stop_pidfile munged "$STATE/munge/munged.pid"
    for file in "$CONF_DIR/slurm.conf" "$CONF_DIR/gres.conf"; do
        if [[ -e $file ]] && head -1 "$file" | grep -qF "$MARKER"; then rm -f "$file"; fi
    done
    say "down"
}

case ${1:-} in
install) install ;;
up) up ;;
down) down ;;
*)
    echo "usage: $0 install|up|down" >&2
    exit 2
    ;;
esac
