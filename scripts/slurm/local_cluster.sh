#!/usr/bin/env bash
# Start (or stop) a single-node Slurm cluster on this machine, for checking the submitit_slurm launcher
# against a real Slurm. Needs root and Debian's slurmctld, slurmd, slurm-client and munge (installed if
# missing). Usage: scripts/slurm/local_cluster.sh start|stop|status
set -euo pipefail
STATE=${VRS_SLURM_DIR:-/tmp/vrs-slurm}
CONF=$STATE/slurm.conf
action=${1:-start}

need_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null && command -v munged >/dev/null
}

stop() {
  pkill -x slurmd 2>/dev/null || true
  pkill -x slurmctld 2>/dev/null || true
  for _ in $(seq 20); do pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || break; sleep 0.5; done
  echo "Slurm stopped"
}

start() {
  [ "$(id -u)" = 0 ] || { echo "error: run as root (starts munged, slurmctld, slurmd)" >&2; exit 1; }
  if ! need_packages; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge) >/dev/null
  fi
  mkdir -p "$STATE"/{spool,state,log} /run/munge /etc/munge
  chown munge:munge /run/munge /etc/munge 2>/dev/null || true
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
  fi
  pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged || /usr/sbin/munged --force
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  cat > "$CONF" <<CFG
ClusterName=vrs-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CFG
  export SLURM_CONF=$CONF
  # A throw-away test cluster: daemons of an earlier start (possibly with another state folder) are replaced.
  stop >/dev/null
  slurmctld -f "$CONF"
  slurmd -f "$CONF"
  for _ in $(seq 90); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      echo "Slurm is up: export SLURM_CONF=$CONF"; sinfo; return 0
    fi
    sleep 1
  done
  echo "error: Slurm did not come up; logs in $STATE/log" >&2
  tail -n 20 "$STATE"/log/*.log >&2 || true
  exit 1
}


case $action in
  start) start ;;
  stop) stop ;;
  status) SLURM_CONF=$CONF sinfo ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
