#!/usr/bin/env bash
# The largest node of a SLURM partition, as "CPUS MEMORY_MB TIME_LIMIT_MINUTES" (time 0: no limit), for
# conf/slurm.config: the resource limits of -profile slurm and the check that a task's request fits.
#
# Usage: linum_motor_slurm_node.sh [PARTITION]     (none or empty: the cluster's default partition)
# Prints nothing and exits 1 when sinfo is missing, fails, or knows no such partition.
set -euo pipefail

partition=${1:-}
if [[ -z "$partition" ]]; then
    # the default partition is the one sinfo marks with '*'
    partition=$(sinfo -h -o '%P' 2>/dev/null | sed -n 's/\*$//p' | head -n 1) || exit 1
fi
[[ -n "$partition" ]] || exit 1
sinfo -h -N -p "$partition" -o '%c %m %l' 2>/dev/null | awk '
    function minutes(limit,    days, parts, n) {
        if (limit ~ /^(infinite|UNLIMITED|n\/a)$/) return 0
        days = 0
        if (limit ~ /-/) { split(limit, parts, "-"); days = parts[1]; limit = parts[2] }
        n = split(limit, parts, ":")
        if (n == 3) return days * 1440 + parts[1] * 60 + parts[2] + (parts[3] > 0 ? 1 : 0)
        if (n == 2) return days * 1440 + parts[1] + (parts[2] > 0 ? 1 : 0)
        return days * 1440 + parts[1]
    }
    {
        cpus = $1 + 0; memory = $2 + 0
        if (cpus > max_cpus) max_cpus = cpus
        if (memory > max_memory) max_memory = memory
        time = minutes($3); seen = 1
    }
    END {
        if (!seen) exit 1
        print max_cpus, max_memory, time
    }'
