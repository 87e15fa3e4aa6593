"""How many threads torch gets in a worker: the CPUs this container may use, shared by the
replica's workers.

torch starts one thread per core it sees, and in a container it sees the node's cores,
not the CPU limit (a Kubernetes ``limits.cpu`` or ``docker --cpus`` is a CFS quota): two
workers of a 4-CPU pod on a 64-core node would each run 64 threads and be throttled.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cpu_quota(cgroup_root: Path = CGROUP_ROOT) -> float | None:
    """CPUs allowed by the container's CFS quota (cgroup v2 ``cpu.max`` or v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``); None when there is no quota."""
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((cgroup_root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((cgroup_root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


def available_cpus(cgroup_root: Path = CGROUP_ROOT) -> float:
    """CPUs this process may use: its CPU affinity, capped by the CFS quota."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    cpus = float(affinity or os.cpu_count() or 1)
    quota = cpu_quota(cgroup_root)
    return min(cpus, quota) if quota is not None else cpus


def torch_threads(env: dict[str, str], cgroup_root: Path = CGROUP_ROOT) -> tuple[int, str]:
    """(threads, why): ``SAM2_TORCH_THREADS`` if set, else the available CPUs divided by
    ``SAM2_WORKERS`` (the trigger's ``numWorkers``; default 1), at least 1."""
    explicit = (env.get("SAM2_TORCH_THREADS") or "").strip()
    if explicit:
        return max(1, int(explicit)), "SAM2_TORCH_THREADS"
    workers = max(1, int(env.get("SAM2_WORKERS") or 1))
    cpus = available_cpus(cgroup_root)
    threads = max(1, math.floor(cpus / workers))
    return threads, f"{cpus:g} CPUs / SAM2_WORKERS={workers}"


def apply_torch_threads(env: dict[str, str], cgroup_root: Path = CGROUP_ROOT) -> str:
    """Set torch's intra-op threads for this worker; a note for the startup line."""
    threads, why = torch_threads(env, cgroup_root)
    torch.set_num_threads(threads)
    return f"torch threads: {threads} ({why})"
