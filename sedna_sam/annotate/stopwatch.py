"""Seconds per named stage of one piece of work, wall and process CPU."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class Stopwatch:
    """Wall and process-CPU seconds per stage; ``sync`` waits for CUDA at each stage end so
    that GPU time lands in the stage that queued it."""

    def __init__(self, device: str = "cpu", sync: bool = False) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.sync = sync and str(device).startswith("cuda")

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize()
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - wall
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - cpu
