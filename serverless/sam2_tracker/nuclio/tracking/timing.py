"""Per-call phase timings (seconds), so benchmarks can split model time from overhead."""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch


class PhaseTimer:
    """Accumulates wall time per named phase; on CUDA it synchronises at phase ends so
    asynchronous kernels are charged to the phase that launched them."""

    def __init__(self, device: torch.device) -> None:
        self.synchronize = device.type == "cuda"
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.synchronize:
                torch.cuda.synchronize()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
