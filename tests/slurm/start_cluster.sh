#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for tests/test_slurm_cluster.py (root, Debian 12).
# Installs Slurm and munge from Debian if missing, writes /etc/slurm/slurm.conf for this host and
# starts munged, slurmctld and slurmd (no accounting database: the test asks squeue for job
# states). Idempotent: a running cluster is left as it is. Exits non-zero if no cluster comes up.
set -euo pipefail

if sinfo -h >/dev/null 2>&1; then
    exit 0
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi

state=/tmp/retro-search-slurm
mkdir -p "$state"/{state,spool,log,run} /etc/slurm
host=$(hostname -s)
mem_mb=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=retro-search-test
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MinJobAge=300
ReturnToService=2
StateSaveLocation=$state/state
SlurmdSpoolDir=$state/spool
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
SlurmctldPidFile=$state/run/slurmctld.pid
SlurmdPidFile=$state/run/slurmd.pid
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$mem_mb State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=1024
CONF

mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged
# The daemons daemonise themselves (run in the foreground they leave zombies here).
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 30); do
    if sinfo -h -o %t 2>/dev/null | grep -q idle; then
        exit 0
    fi
    sleep 1
done
echo "SLURM did not come up; see $state/log/" >&2
exit 1
