"""torch threads per worker from the container's CPU quota (cgroup files as Docker and
Kubernetes write them, in a temporary folder) and the workers per replica."""

from __future__ import annotations

import os

import pytest
import torch
from tracking.cpu_threads import apply_torch_threads, available_cpus, cpu_quota, torch_threads

AFFINITY = len(os.sched_getaffinity(0))


def cgroup(tmp_path, v2: str | None = None, v1: tuple[int, int] | None = None):
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2 + "\n")
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(f"{v1[0]}\n")
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(f"{v1[1]}\n")
    return tmp_path


@pytest.mark.parametrize(
    ("v2", "v1", "quota"),
    [
        ("400000 100000", None, 4.0),  # limits.cpu: 4 (cgroup v2)
        ("150000 100000", None, 1.5),
        ("max 100000", None, None),  # no limit
        (None, (200000, 100000), 2.0),  # cgroup v1
        (None, (-1, 100000), None),
        (None, None, None),  # no cgroup files at all
    ],
)
def test_cpu_quota(tmp_path, v2, v1, quota):
    root = cgroup(tmp_path, v2, v1)
    assert cpu_quota(root) == quota
    assert available_cpus(root) == (min(AFFINITY, quota) if quota else AFFINITY)


@pytest.mark.parametrize(
    ("env", "threads"),
    [
        ({"SAM2_WORKERS": "2"}, 4),  # 8 CPUs / 2 workers
        ({"SAM2_WORKERS": "3"}, 2),
        ({"SAM2_WORKERS": "16"}, 1),  # never 0
        ({}, 8),
        ({"SAM2_WORKERS": "2", "SAM2_TORCH_THREADS": "3"}, 3),  # explicit wins
    ],
)
def test_threads_are_the_quota_shared_by_the_workers(tmp_path, monkeypatch, env, threads):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))  # a big node
    root = cgroup(tmp_path, "800000 100000")  # an 8-CPU limit
    assert torch_threads(env, root)[0] == threads


def test_apply_sets_torch_and_says_why(tmp_path):
    before = torch.get_num_threads()
    try:
        note = apply_torch_threads({"SAM2_TORCH_THREADS": "1"}, cgroup(tmp_path))
        assert torch.get_num_threads() == 1
        assert note == "torch threads: 1 (SAM2_TORCH_THREADS)"
        note = apply_torch_threads({"SAM2_WORKERS": "1"}, cgroup(tmp_path, "100000 100000"))
        assert note == "torch threads: 1 (1 CPUs / SAM2_WORKERS=1)"
    finally:
        torch.set_num_threads(before)
