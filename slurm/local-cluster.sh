#!/usr/bin/env bash
# local-cluster.sh: a real two-node Slurm cluster on this one machine.
#
#   slurm/local-cluster.sh up     [DIR]   start it; last line: export SLURM_CONF=DIR/slurm.conf
#   slurm/local-cluster.sh down   [DIR]   stop what `up` started (succeeds if nothing runs)
#   slurm/local-cluster.sh status [DIR]   say whether it is up (exit 0) or not (exit 3)
#
# DIR defaults to ${LAUNCHER_SLURM_DIR:-/tmp/launcher-slurm}. Everything the cluster writes
# lives there: slurm.conf, controller state, slurmd spools, logs and pid files. Nothing else on
# the machine is touched: no /etc/slurm, no systemd units, no munge key, no /etc/hosts lines.
#
# Why it exists: the launcher's Slurm path (sbatch/srun, multi-node jobs, requeue on
# preemption) should be exercised against the real Slurm daemons, not a mock. One slurmctld
# and two slurmd (nodes n1 and n2, both on 127.0.0.1, on different ports) are enough for a
# 2-node job with one task per node (each node claims 4 CPUs, all of them this machine's).
# Each node also has 2 GPUs for Slurm to hand out (GRES): character devices under DIR/dev
# standing in for /dev/nvidia*, so jobs asking --gpus-per-node=2 are scheduled and see
# CUDA_VISIBLE_DEVICES and SLURM_GPUS_ON_NODE; torch still sees no CUDA there. Making them
# needs root (mknod); without it the nodes have no GPUs and the script says so.
# Partition "debug" is the default; jobs sent to partition "urgent" preempt debug jobs by
# requeueing them, like a real cluster reclaiming nodes. Debian's packages are used as they
# are; this script installs nothing (see slurm/README.md for the apt-get line).
#
# `up` starts from a clean state every time (no old jobs, job ids restart at 1), so tests that
# use the cluster should give every run its own output folder.
#
# Ports (override if taken): controller LAUNCHER_SLURM_CTLD_PORT (16817), slurmd of n1
# LAUNCHER_SLURM_NODE_PORT (17001), n2 the port after it.

set -euo pipefail
# The daemons live in /usr/sbin, which a non-root PATH on Debian lacks.
PATH=$PATH:/usr/sbin:/sbin

APT_LINE="apt-get install -y slurmctld slurmd slurm-client munge"
NODES=(n1 n2)
CTLD_PORT=${LAUNCHER_SLURM_CTLD_PORT:-16817}
NODE_PORT=${LAUNCHER_SLURM_NODE_PORT:-17001}
UP_TIMEOUT=${LAUNCHER_SLURM_UP_TIMEOUT:-30}
MARKER=.launcher-slurm          # a DIR holding this file was made by this script

die() { echo "local-cluster: error: $*" >&2; exit 1; }
say() { echo "local-cluster: $*" >&2; }   # stdout carries only the export line

usage() {
    echo "usage: $0 {up|down|status} [DIR]   (DIR defaults to \${LAUNCHER_SLURM_DIR:-/tmp/launcher-slurm})" >&2
    exit 2
}

[[ $# -ge 1 && $# -le 2 ]] || usage
CMD=$1
DIR=${2:-${LAUNCHER_SLURM_DIR:-/tmp/launcher-slurm}}
[[ -n $DIR ]] || die "empty DIR"
DIR=$(realpath -m -- "$DIR")
[[ $DIR != / ]] || die "refusing to use / as the cluster directory"
[[ $DIR != *[[:space:]]* ]] || die "DIR must not contain spaces (slurm.conf cannot quote them): $DIR"
CONF=$DIR/slurm.conf
# Every Slurm command this script runs talks to this cluster only, whatever the caller's env.
export SLURM_CONF=$CONF

# --- processes, by pid file ------------------------------------------------------------------

pidfile() { # daemon name: slurmctld | n1 | n2
    if [[ $1 == slurmctld ]]; then echo "$DIR/run/slurmctld.pid"; else echo "$DIR/run/slurmd-$1.pid"; fi
}

# Print the pid from a pid file if that process is alive and really is our daemon: its command
# line must name our slurm.conf. A stale pid file whose pid was reused never matches.
ours() {
    local f pid cmd
    f=$(pidfile "$1")
    [[ -r $f ]] || return 1
    pid=$(tr -dc 0-9 <"$f")
    [[ -n $pid && -r /proc/$pid/cmdline ]] || return 1
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmd == *slurm*" -f $CONF "* ]] || return 1
    echo "$pid"
}

running_count() {
    local n=0 d
    for d in slurmctld "${NODES[@]}"; do ours "$d" >/dev/null && n=$((n + 1)); done
    echo "$n"
}

# Job steps run under slurmstepd, which slurmd execs with its own environment. `up` starts the
# daemons with LAUNCHER_SLURM_DIR=DIR in it, so a step left behind by a killed slurmd can still
# be told apart from any other Slurm on the machine.
our_stepds() {
    local p
    for p in $(pgrep -x slurmstepd 2>/dev/null || true); do
        tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qxF "LAUNCHER_SLURM_DIR=$DIR" && echo "$p"
    done
    return 0
}

with_descendants() { # pid...: print them and all their descendants
    local all=" $* " p ppid grew=1 tree
    tree=$(ps -e -o pid=,ppid=)
    while ((grew)); do
        grew=0
        while read -r p ppid; do
            [[ $all == *" $ppid "* && $all != *" $p "* ]] && { all+="$p "; grew=1; }
        done <<<"$tree"
    done
    echo "${all# }"
}

wait_gone() { # seconds pid...
    local t=$(($1 * 10)) p alive
    shift
    while ((t-- > 0)); do
        alive=0
        for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
        ((alive)) || return 0
        sleep 0.1
    done
    return 1
}

now_ms() { local t=${EPOCHREALTIME:-$SECONDS.000000}; t=${t/[.,]/}; echo $((10#$t / 1000)); }

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

nodes_idle() { # true when every node of the cluster reports idle
    local out
    out=$(sinfo -h -N -p debug -o '%N %T' 2>/dev/null) || return 1
    [[ $(grep -c ' idle$' <<<"$out") -eq ${#NODES[@]} ]]
}

# --- GPU stand-ins -------------------------------------------------------------------------

GPUS_PER_NODE=2
GRES=0   # set by make_gpus: 1 when the device files exist

# slurmd's gres/gpu plugin wants a character or block device per GPU (a plain file is refused:
# "is not a valid character or block device"); one with /dev/null's numbers is enough.
make_gpus() {
    local i
    rm -rf -- "$DIR/dev"
    mkdir -p "$DIR/dev"
    for ((i = 0; i < ${#NODES[@]} * GPUS_PER_NODE; i++)); do
        mknod "$DIR/dev/nvidia$i" c 1 3 2>/dev/null || {
            rm -rf -- "$DIR/dev"
            say "cannot mknod $DIR/dev/nvidia$i (not root?): nodes get no GPUs (GRES)"
            return 0
        }
    done
    GRES=1
}

write_gres_conf() {
    local i n first
    {
        echo "# Written by slurm/local-cluster.sh: $GPUS_PER_NODE stand-in GPUs per node."
        echo "AutoDetect=off"
        for i in "${!NODES[@]}"; do
            n=${NODES[$i]}
            first=$((i * GPUS_PER_NODE))
            echo "NodeName=$n Name=gpu File=$DIR/dev/nvidia[$first-$((first + GPUS_PER_NODE - 1))]"
        done
    } >"$DIR/gres.conf"
}

# --- slurm.conf ------------------------------------------------------------------------------

write_conf() {
    local host user
    # slurmctld only runs where the short host name matches SlurmctldHost; the address in
    # parentheses means nothing ever needs DNS.
    host=$(hostname -s)
    user=$(id -un)
    local gres_types="" gres=""
    if ((GRES)); then
        write_gres_conf
        gres_types="GresTypes=gpu"
        gres="Gres=gpu:$GPUS_PER_NODE"
    else
        rm -f -- "$DIR/gres.conf"
    fi
    cat >"$CONF" <<EOF
# Written by slurm/local-cluster.sh: a two-node cluster on one machine. Edits are lost on \`up\`.
ClusterName=launcher
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
# The daemons run as whoever runs this script (root in tests): no slurm system user needed.
SlurmUser=$user
SlurmdUser=$user

# No munge: no key to create, no extra daemon. Fine for a private, single-machine cluster.
AuthType=auth/none
CredType=cred/none
# A requeued job may only start again once its old credential expired (cred_expire + 1 s;
# 120 s by default). 5 is the least Slurm accepts (read at start only, not on reconfigure).
AuthInfo=cred_expire=5

# Everything under DIR. %n is the node name, so the two slurmd keep apart.
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true

# No cgroups: works in containers and needs no cgroup.conf.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# Both slurmd sit on the same cores: trust the node lines below instead of probing the
# hardware, so the nodes register the same way on any machine (even a 1-core one). 4 CPUs
# per node lets a job ask --cpus-per-task for 2 processes and their data workers.
SlurmdParameters=config_overrides
# GPUs: stand-in device files listed in gres.conf beside this file (empty without root).
$gres_types
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none

# Scheduling every second: a job starts ~0.3 s after sbatch instead of ~3 s.
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=1

# Preemption / requeue: batch jobs are requeued when a node fails or on \`scontrol requeue\`;
# KillWait is the grace time between SIGTERM and SIGKILL (time to save a checkpoint).
JobRequeue=1
KillWait=30
# Real preemption too: a job in partition "urgent" requeues jobs of "debug" that hold the
# CPUs it needs (they get SIGTERM, KillWait later SIGKILL, then run again).
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
# Finished jobs stay visible to \`scontrol show job\` (there is no sacct) for 10 minutes:
# \`launcher status\` reads a job's end there, and a test may ask minutes after the job ended.
MinJobAge=600
# A node that was down comes back by itself when its slurmd registers again.
ReturnToService=2

NodeName=${NODES[0]} NodeHostname=$host NodeAddr=127.0.0.1 Port=$NODE_PORT CPUs=4 RealMemory=4000 $gres State=UNKNOWN
NodeName=${NODES[1]} NodeHostname=$host NodeAddr=127.0.0.1 Port=$((NODE_PORT + 1)) CPUs=4 RealMemory=4000 $gres State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=urgent Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=2
EOF
}

# --- commands --------------------------------------------------------------------------------

check_tools() {
    local t
    for t in slurmctld slurmd sinfo scontrol squeue scancel; do
        command -v "$t" >/dev/null 2>&1 || die "$t not found; install Slurm first (as root): $APT_LINE"
    done
}

print_export() { echo "export SLURM_CONF=$CONF"; }

cmd_up() {
    check_tools
    local n
    n=$(running_count)
    # Already up: all daemons alive and the controller answers (nodes may be busy with jobs).
    if ((n == 1 + ${#NODES[@]})) && sinfo -h >/dev/null 2>&1; then
        say "already up in $DIR"
        print_export
        return 0
    fi
    if ((n > 0)); then
        say "half up in $DIR ($n of $((1 + ${#NODES[@]})) daemons alive, or the controller does not answer); restarting it"
        cmd_down >/dev/null
    fi

    if [[ -d $DIR && -n $(ls -A "$DIR") && ! -e $DIR/$MARKER ]]; then
        die "$DIR exists, is not empty and was not made by this script; pick another DIR"
    fi
    local p
    for p in "$CTLD_PORT" "$NODE_PORT" "$((NODE_PORT + 1))"; do
        port_busy "$p" && die "port $p on 127.0.0.1 is in use (another cluster?); set LAUNCHER_SLURM_CTLD_PORT / LAUNCHER_SLURM_NODE_PORT"
    done

    mkdir -p "$DIR"
    touch "$DIR/$MARKER"
    # Start clean: old controller state or slurmd spools would bring back old jobs, and an old
    # slurmd spool can hold revoked credentials for job ids that the new controller reuses.
    rm -rf -- "$DIR/state" "$DIR/spool" "$DIR/run"
    mkdir -p "$DIR/state" "$DIR/run" "$DIR/log"
    for n in "${NODES[@]}"; do mkdir -p "$DIR/spool/$n"; done   # slurmd does not create it
    for p in "$DIR"/log/*.log; do [[ -e $p ]] && mv -f -- "$p" "$p.1"; done
    make_gpus
    write_conf

    local t0
    t0=$(now_ms)
    env LAUNCHER_SLURM_DIR="$DIR" slurmctld -f "$CONF" -c ||
        { cmd_down >/dev/null 2>&1; die "slurmctld did not start; see $DIR/log/slurmctld.log"; }
    for n in "${NODES[@]}"; do
        env LAUNCHER_SLURM_DIR="$DIR" slurmd -f "$CONF" -N "$n" ||
            { cmd_down >/dev/null 2>&1; die "slurmd -N $n did not start; see $DIR/log/slurmd-$n.log"; }
    done

    until nodes_idle; do
        if (($(now_ms) - t0 >= UP_TIMEOUT * 1000)); then
            echo "local-cluster: error: nodes not idle after ${UP_TIMEOUT}s; sinfo says:" >&2
            sinfo -N -p debug -o '%N %T %E' >&2 2>&1 || true
            for p in "$DIR"/log/slurmctld.log "$DIR"/log/slurmd-*.log; do
                [[ -e $p ]] && { echo "--- tail $p" >&2; tail -n 5 "$p" >&2; }
            done
            cmd_down >/dev/null 2>&1 || true
            echo "local-cluster: error: stopped what was started; logs are in $DIR/log" >&2
            exit 1
        fi
        sleep 0.2
    done
    t0=$(($(now_ms) - t0))
    say "up in $DIR: nodes ${NODES[*]} idle after $((t0 / 1000)).$(printf %03d $((t0 % 1000)))s"
    print_export
}

cmd_down() {
    local pids=() ids=() kill=() d p nodes_up=1
    for d in slurmctld "${NODES[@]}"; do p=$(ours "$d") && pids+=("$p"); done
    for d in "${NODES[@]}"; do ours "$d" >/dev/null || nodes_up=0; done
    if ((${#pids[@]} == 0)) && [[ -z $(our_stepds) ]]; then
        rm -f -- "$DIR"/run/*.pid 2>/dev/null || true
        say "not running in $DIR"
        return 0
    fi

    if ours slurmctld >/dev/null; then
        # Kill jobs outright (a plain cancel would wait KillWait), so no job step outlives the
        # cluster. Waiting only makes sense while both slurmd are there to end the steps.
        mapfile -t ids < <(squeue -h -o %i 2>/dev/null || true)
        if ((${#ids[@]})); then
            scancel --full --signal=KILL "${ids[@]}" 2>/dev/null || true
            scancel "${ids[@]}" 2>/dev/null || true
            if ((nodes_up)); then
                for _ in $(seq 50); do [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break; sleep 0.1; done
            fi
        fi
        # Saves the controller state and forwards the shutdown to the slurmd.
        timeout 10 scontrol shutdown >/dev/null 2>&1 || true
    fi
    if ((${#pids[@]})) && ! wait_gone 10 "${pids[@]}"; then
        kill -TERM "${pids[@]}" 2>/dev/null || true
        wait_gone 5 "${pids[@]}" || kill -KILL "${pids[@]}" 2>/dev/null || true
    fi
    # Steps whose slurmd died before they ended: kill them and everything they started.
    read -ra kill <<<"$(our_stepds | tr '\n' ' ')"
    if ((${#kill[@]})); then
        read -ra kill <<<"$(with_descendants "${kill[@]}")"
        kill -KILL "${kill[@]}" 2>/dev/null || true
        wait_gone 5 "${kill[@]}" || true
    fi
    rm -f -- "$DIR"/run/*.pid
    say "stopped in $DIR"
}

cmd_status() {
    local d p n
    for d in slurmctld "${NODES[@]}"; do
        if p=$(ours "$d"); then say "$d running (pid $p)"; else say "$d not running"; fi
    done
    n=$(running_count)
    if ((n == 1 + ${#NODES[@]})) && command -v sinfo >/dev/null; then
        sinfo -N -p debug -o '%N %T %c %m %G' || true
        nodes_idle || say "up, but not every node is idle"
        print_export
        return 0
    fi
    say "down in $DIR"
    return 3
}

case $CMD in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) usage ;;
esac
