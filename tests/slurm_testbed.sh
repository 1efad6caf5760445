#!/usr/bin/env bash
# slurm_testbed.sh — bring up / tear down a REAL single-node SLURM cluster on
# this machine, from the distribution's packages (written for Debian 12).
#
# Usage (as root; the install step and slurmd need it):
#   bash tests/slurm_testbed.sh start    # install if needed, configure, start, wait for node idle
#   bash tests/slurm_testbed.sh stop     # cancel testbed jobs, stop slurmd + slurmctld (+ munged if we started it)
#   bash tests/slurm_testbed.sh status   # exit 0 iff the controller answers and the node is idle/mixed/allocated
#   bash tests/slurm_testbed.sh env      # print `export SLURM_CONF=...`; use: eval "$(bash tests/slurm_testbed.sh env)"
#
# The Slurm client tools (sinfo, srun, sbatch, squeue, scontrol, scancel) must
# see the testbed's config: `start` writes it to $SLURM_TESTBED_DIR/slurm.conf
# and does NOT touch /etc/slurm/slurm.conf by default, so export
#   SLURM_CONF=$SLURM_TESTBED_DIR/slurm.conf
# in every shell (and therefore every Nextflow run) that talks to the cluster.
# With SLURM_TESTBED_ETC=1, `start` instead also symlinks /etc/slurm/slurm.conf
# to that file (moving an existing one to slurm.conf.testbed-backup) and `stop`
# removes the symlink and restores the backup.
#
# Cluster: one node named $(hostname -s), NodeAddr=127.0.0.1, CPUs=$(nproc),
# RealMemory = 95% of MemTotal in MB; one partition `cpu` (Default=YES,
# MaxTime=INFINITE unless SLURM_TESTBED_MAXTIME, State=UP); select/cons_tres +
# CR_Core_Memory (so --mem is compared against RealMemory), DefMemPerCPU,
# proctrack/linuxproc, task/none, no cgroups, no accounting. Daemons are
# started directly (no systemd); slurmctld and slurmd run as root. The knobs
# below are read on every `start`: a start with different values rewrites
# slurm.conf and restarts the slurm daemons (saved jobs are kept).
#
# What it touches:
#   * apt-get install slurmctld slurmd slurm-client munge   (only if missing)
#   * /etc/munge/munge.key   (created with mungekey only if absent)
#   * munged with Debian's default paths (/run/munge, /var/lib/munge,
#     /var/log/munge) — started only if munge is not already working, and then
#     stopped again by `stop`; an already-running munged is left alone.
#   * $SLURM_TESTBED_DIR (default /tmp/slurm-testbed): slurm.conf, state/
#     (StateSaveLocation), spool/ (SlurmdSpoolDir), log/*.log, run/*.pid
#   * /etc/slurm/slurm.conf only when SLURM_TESTBED_ETC=1 (see above)
#
# Environment knobs:
#   SLURM_TESTBED_DIR       (default /tmp/slurm-testbed)
#   SLURM_TESTBED_CPUS      (default $(nproc))
#   SLURM_TESTBED_MEM_MB    (default 95% of MemTotal)
#   SLURM_TESTBED_DEF_MEM_PER_CPU  MB given to a job that does not ask for
#                           memory (default MEM_MB / CPUS; without it Slurm
#                           gives such a job the WHOLE node's memory, so jobs
#                           without --mem would run one at a time)
#   SLURM_TESTBED_MAXTIME   the partition's MaxTime (default INFINITE; e.g. 04:00:00)
#   SLURM_TESTBED_TIMEOUT   seconds to wait for daemons / node idle (default 60)
#   SLURM_TESTBED_EXTRA_CONF  extra lines appended to slurm.conf
#                             (e.g. 'EnforcePartLimits=ALL')
#   SLURM_TESTBED_ETC=1     also point /etc/slurm/slurm.conf at the testbed config
set -euo pipefail

TESTBED_DIR=${SLURM_TESTBED_DIR:-/tmp/slurm-testbed}
CONF=$TESTBED_DIR/slurm.conf
STATE_DIR=$TESTBED_DIR/state
SPOOL_DIR=$TESTBED_DIR/spool
LOG_DIR=$TESTBED_DIR/log
RUN_DIR=$TESTBED_DIR/run
CTLD_PID=$RUN_DIR/slurmctld.pid
SLURMD_PID=$RUN_DIR/slurmd.pid
MUNGE_MARK=$RUN_DIR/munged.started-by-testbed
ETC_CONF=/etc/slurm/slurm.conf
ETC_BACKUP=/etc/slurm/slurm.conf.testbed-backup
TIMEOUT=${SLURM_TESTBED_TIMEOUT:-60}
NODE=$(hostname -s)
PARTITION=cpu

export SLURM_CONF=$CONF

log() { printf 'slurm_testbed: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need_root() {
    [[ $(id -u) -eq 0 ]] || die "'$1' must run as root (it installs packages and runs slurmd)"
}

# pid_alive PIDFILE NAME -> prints the pid and returns 0 if the process in
# PIDFILE is alive and its command name is NAME.
pid_alive() {
    local pidfile=$1 name=$2 pid comm
    [[ -s $pidfile ]] || return 1
    pid=$(tr -dc '0-9' <"$pidfile")
    [[ -n $pid && -r /proc/$pid/comm ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    # Debian's binaries are slurmd-wlm / slurmctld-wlm behind alternatives.
    [[ $comm == "$name" || $comm == "$name-wlm" ]] || return 1
    printf '%s\n' "$pid"
}

# stop_pidfile PIDFILE NAME: SIGTERM, bounded wait, then SIGKILL.
stop_pidfile() {
    local pidfile=$1 name=$2 pid i
    if ! pid=$(pid_alive "$pidfile" "$name"); then
        rm -f "$pidfile"
        return 0
    fi
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 20 * 4; i++)); do
        [[ -d /proc/$pid ]] || break
        sleep 0.25
    done
    if [[ -d /proc/$pid ]]; then
        log "$name (pid $pid) ignored SIGTERM for 20s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$pidfile"
}

# Live (non-zombie) pids named NAME (or NAME-wlm), excluding the one in
# PIDFILE. Empty if our own daemon is alive: then there is nothing to start.
foreign_pids() {
    local name=$1 pidfile=$2 p st out=""
    pid_alive "$pidfile" "$name" >/dev/null && return 0
    for p in $(pgrep -x "$name" || true) $(pgrep -x "$name-wlm" || true); do
        st=$(awk '{ print $3 }' "/proc/$p/stat" 2>/dev/null || true)
        if [[ -n $st && $st != Z ]]; then out+="$p "; fi
    done
    printf '%s' "${out% }"
}

install_if_needed() {
    local missing=()
    local cmd
    for cmd in slurmctld slurmd sinfo srun sbatch squeue scontrol scancel munged munge unmunge; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
    done
    if ((${#missing[@]} == 0)); then
        return 0
    fi
    log "missing commands: ${missing[*]} -> installing slurmctld slurmd slurm-client munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge
    for cmd in "${missing[@]}"; do
        command -v "$cmd" >/dev/null 2>&1 || die "still missing '$cmd' after apt-get install"
    done
}

munge_works() {
    munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1
}

ensure_munge() {
    local key=/etc/munge/munge.key i
    if [[ ! -s $key ]]; then
        log "creating munge key $key"
        install -d -m 0700 -o munge -g munge /etc/munge
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile="$key"
        else
            dd if=/dev/urandom of="$key" bs=1 count=1024 status=none
        fi
        chown munge:munge "$key"
        chmod 0400 "$key"
    fi
    if munge_works; then
        local mpid=""
        [[ -f $MUNGE_MARK ]] && mpid=$(tr -dc '0-9' <"$MUNGE_MARK")
        if [[ -n $mpid && $(cat "/proc/$mpid/comm" 2>/dev/null || true) == munged ]]; then
            log "munged already running (pid $mpid, started by this testbed)"
        else
            rm -f "$MUNGE_MARK"
            log "munged already running (not started by this testbed; stop will leave it alone)"
        fi
        return 0
    fi
    install -d -m 0755 -o munge -g munge /run/munge
    install -d -m 0711 -o munge -g munge /var/lib/munge
    install -d -m 0700 -o munge -g munge /var/log/munge
    # A stale socket/pid from a dead munged makes the new one refuse to start.
    if [[ -e /run/munge/munged.pid ]] && ! pgrep -x munged >/dev/null; then
        rm -f /run/munge/munged.pid /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    fi
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged
    for ((i = 0; i < TIMEOUT * 4; i++)); do
        if munge_works; then
            cat /run/munge/munged.pid >"$MUNGE_MARK" 2>/dev/null || echo unknown >"$MUNGE_MARK"
            return 0
        fi
        sleep 0.25
    done
    die "munged did not come up within ${TIMEOUT}s (see /var/log/munge/munged.log)"
}

mem_mb() {
    if [[ -n ${SLURM_TESTBED_MEM_MB:-} ]]; then
        printf '%s\n' "$SLURM_TESTBED_MEM_MB"
    else
        # MemTotal is in kB; slurmd -C reports MemTotal/1024.  Use 95% of it.
        awk '/^MemTotal:/ { printf "%d\n", $2 / 1024 * 0.95 }' /proc/meminfo
    fi
}

write_conf() {
    local out=$1 cpus mem defmem
    cpus=${SLURM_TESTBED_CPUS:-$(nproc)}
    mem=$(mem_mb)
    defmem=${SLURM_TESTBED_DEF_MEM_PER_CPU:-$((mem / cpus))}
    cat >"$out" <<EOF
# Generated by tests/slurm_testbed.sh — single-node test cluster. Do not edit;
# it is rewritten on every 'start'.
ClusterName=testbed
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Containers often cannot raise rlimits; do not copy the submitter's.
PropagateResourceLimits=NONE
# A node that was down (e.g. after stop/start) returns to service by itself.
ReturnToService=2
# Accept a CPU/topology layout that differs from what slurmd detects.
SlurmdParameters=config_overrides
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
MinJobAge=300
# Jobs that do not ask for memory get this much per CPU (else: the whole node).
DefMemPerCPU=$defmem
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=${SLURM_TESTBED_MAXTIME:-INFINITE} State=UP
EOF
    if [[ -n ${SLURM_TESTBED_EXTRA_CONF:-} ]]; then
        printf '%s\n' "$SLURM_TESTBED_EXTRA_CONF" >>"$out"
    fi
}

link_etc_conf() {
    [[ ${SLURM_TESTBED_ETC:-0} == 1 ]] || return 0
    install -d -m 0755 /etc/slurm
    if [[ -L $ETC_CONF && $(readlink "$ETC_CONF") == "$CONF" ]]; then
        return 0
    fi
    if [[ -e $ETC_CONF || -L $ETC_CONF ]]; then
        [[ -e $ETC_BACKUP || -L $ETC_BACKUP ]] &&
            die "$ETC_BACKUP already exists; refusing to overwrite it"
        log "moving existing $ETC_CONF to $ETC_BACKUP"
        mv "$ETC_CONF" "$ETC_BACKUP"
    fi
    ln -s "$CONF" "$ETC_CONF"
}

unlink_etc_conf() {
    if [[ -L $ETC_CONF && $(readlink "$ETC_CONF") == "$CONF" ]]; then
        rm -f "$ETC_CONF"
        if [[ -e $ETC_BACKUP || -L $ETC_BACKUP ]]; then
            log "restoring $ETC_BACKUP to $ETC_CONF"
            mv "$ETC_BACKUP" "$ETC_CONF"
        fi
    fi
}

# node_state -> prints the node's state as sinfo sees it (e.g. idle, idle*, down*)
node_state() {
    sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n1
}

show_logs() {
    local f
    for f in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log"; do
        [[ -f $f ]] || continue
        log "---- last lines of $f ----"
        tail -n 20 "$f" >&2 || true
    done
}

wait_for_pidfile() {
    local pidfile=$1 name=$2 i
    for ((i = 0; i < TIMEOUT * 4; i++)); do
        pid_alive "$pidfile" "$name" >/dev/null && return 0
        sleep 0.25
    done
    show_logs
    die "$name did not start within ${TIMEOUT}s"
}

stop_slurm_daemons() {
    stop_pidfile "$SLURMD_PID" slurmd
    stop_pidfile "$CTLD_PID" slurmctld
}

cmd_start() {
    need_root start
    install_if_needed
    install -d -m 0755 "$TESTBED_DIR" "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR" "$RUN_DIR"

    local other
    other=$(foreign_pids slurmctld "$CTLD_PID")
    [[ -z $other ]] || die "a slurmctld not started by this testbed is running (pid $other); stop it first"
    other=$(foreign_pids slurmd "$SLURMD_PID")
    [[ -z $other ]] || die "a slurmd not started by this testbed is running (pid $other); stop it first"

    ensure_munge

    local new=$CONF.new
    write_conf "$new"
    if [[ -f $CONF ]] && cmp -s "$new" "$CONF"; then
        rm -f "$new"
    else
        mv "$new" "$CONF"
        if pid_alive "$CTLD_PID" slurmctld >/dev/null || pid_alive "$SLURMD_PID" slurmd >/dev/null; then
            log "configuration changed; restarting the slurm daemons"
            stop_slurm_daemons
        fi
    fi
    chmod 0644 "$CONF"
    link_etc_conf

    if pid_alive "$CTLD_PID" slurmctld >/dev/null; then
        log "slurmctld already running"
    else
        log "starting slurmctld"
        slurmctld -f "$CONF"
        wait_for_pidfile "$CTLD_PID" slurmctld
    fi
    if pid_alive "$SLURMD_PID" slurmd >/dev/null; then
        log "slurmd already running"
    else
        log "starting slurmd"
        slurmd -f "$CONF" -N "$NODE"
        wait_for_pidfile "$SLURMD_PID" slurmd
    fi

    local i state="" resumed=0
    for ((i = 0; i < TIMEOUT * 2; i++)); do
        state=$(node_state || true)
        case $state in
            idle | mixed | allocated | completing) break ;;
            down | drained | draining | down~ | drain)
                # Left over from an earlier run's saved state; the node answers, so resume it.
                if ((resumed == 0)); then
                    log "node $NODE is '$state'; resuming it"
                    scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
                    resumed=1
                fi
                ;;
        esac
        sleep 0.5
    done
    case $state in
        idle | mixed | allocated | completing) ;;
        *)
            show_logs
            scontrol show node "$NODE" >&2 2>/dev/null || true
            die "node $NODE did not become idle within ${TIMEOUT}s (last sinfo state: '${state:-<no answer>}')"
            ;;
    esac

    log "cluster is up: node $NODE is $state"
    sinfo -N -o '%N %P %T %c %m' >&2
    scontrol show node "$NODE" | grep -E 'CPUTot|RealMemory' >&2 || true
    if [[ ${SLURM_TESTBED_ETC:-0} == 1 ]]; then
        log "config: $CONF (also linked at $ETC_CONF, so plain sinfo/sbatch work)"
    else
        log "config: $CONF (/etc/slurm/slurm.conf NOT written). In every shell that uses the cluster run:"
        log "    export SLURM_CONF=$CONF"
    fi
}

cmd_stop() {
    need_root stop
    local i
    if pid_alive "$CTLD_PID" slurmctld >/dev/null; then
        # Cancel this cluster's jobs first so no slurmstepd / job processes outlive slurmd.
        if [[ -n $(squeue -h -o '%i' 2>/dev/null) ]]; then
            log "cancelling remaining testbed jobs"
            scancel --full --partition="$PARTITION" 2>/dev/null || true
            scancel --full 2>/dev/null || true
            for ((i = 0; i < 30 * 2; i++)); do
                [[ -z $(squeue -h -t running,completing,suspended -o '%i' 2>/dev/null) ]] && break
                sleep 0.5
            done
        fi
    fi
    stop_slurm_daemons
    if [[ -f $MUNGE_MARK ]]; then
        local mpid
        mpid=$(tr -dc '0-9' <"$MUNGE_MARK")
        if [[ -n $mpid && $(cat "/proc/$mpid/comm" 2>/dev/null || true) == munged ]]; then
            printf '%s\n' "$mpid" >"$RUN_DIR/munged.pid"
            stop_pidfile "$RUN_DIR/munged.pid" munged
        fi
        rm -f "$MUNGE_MARK"
    fi
    unlink_etc_conf
    local left="" name p st
    for ((i = 0; i < 10 * 2; i++)); do
        left=""
        for name in slurmctld slurmd slurmstepd slurmctld-wlm slurmd-wlm slurmstepd-wlm; do
            for p in $(pgrep -x "$name" || true); do
                st=$(awk '{ print $3 }' "/proc/$p/stat" 2>/dev/null || true)
                if [[ -n $st && $st != Z ]]; then left+="$p $name"$'\n'; fi
            done
        done
        [[ -z $left ]] && break
        sleep 0.5
    done
    if [[ -n $left ]]; then
        log "WARNING: slurm processes still running (not started by this testbed?):"
        printf '%s' "$left" >&2
        exit 1
    fi
    log "stopped (state and logs kept in $TESTBED_DIR)"
}

cmd_status() {
    [[ -f $CONF ]] || { log "no testbed config at $CONF (not started)"; exit 3; }
    local state
    if ! pid_alive "$CTLD_PID" slurmctld >/dev/null; then
        log "slurmctld of this testbed is not running"
        exit 2
    fi
    if ! state=$(sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n1) || [[ -z $state ]]; then
        log "controller does not answer (sinfo failed)"
        exit 2
    fi
    case $state in
        idle | mixed | allocated | completing)
            printf 'node %s: %s\n' "$NODE" "$state"
            ;;
        *)
            printf 'node %s: %s (not usable)\n' "$NODE" "$state"
            exit 1
            ;;
    esac
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) printf 'export SLURM_CONF=%q\n' "$CONF" ;;
    *)
        sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
        exit 64
        ;;
esac
