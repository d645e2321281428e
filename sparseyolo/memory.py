"""Peak resident memory of one call (`PeakRSS`, Linux /proc): the probe of the evaluation and the benchmarks."""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from typing import Any

MiB = 1024 * 1024


class PeakRSS:
    """Peak resident-set growth of the process during one call, in MiB (Linux only).

    Before the call: `malloc_trim(0)` (hand freed heap pages back to the OS), then reset
    the kernel's high-water mark (`VmHWM`) by writing "5" to `/proc/self/clear_refs`. After the call:
    `VmHWM - VmRSS(before)`. The number counts every page the call touched for the first time: outputs,
    temporaries, autograd buffers, maps, allocator slack; it does not count the call's inputs, which
    exist beforehand.

    pin_allocator=True (default) pins glibc's dynamic mmap/trim thresholds at 128 KiB for the whole process,
    so that large freed buffers go back to the OS at once rather than being reused silently; it also makes
    every large allocation page-fault afresh, which slows timed code: use it in a process that does not time.
    pin_allocator=False leaves the allocator alone (timings stay honest); freed heap pages are still handed
    back by `malloc_trim(0)` before each probe, so memory re-used inside the call is counted.
    """

    def __init__(self, pin_allocator: bool = True):
        self.available = False
        self.reason = ""
        self._libc = None
        if not sys.platform.startswith("linux"):
            self.reason = "needs Linux /proc"
            return
        try:
            libc = ctypes.CDLL("libc.so.6")
            if pin_allocator:
                M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
                libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
                libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
            self._libc = libc
        except (OSError, AttributeError):
            self._libc = None
        try:
            self._reset()
            self._read("VmHWM")
            self.available = True
        except OSError as error:
            self.reason = f"cannot reset the peak RSS ({error})"

    @staticmethod
    def _reset() -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    @staticmethod
    def _read(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise OSError(f"{key} not in /proc/self/status")

    def measure(self, fn: Callable[[], Any]) -> tuple[Any, float | None]:
        """`(fn(), peak growth in MiB)`; the growth is None when the probe is unavailable."""
        if not self.available:
            return fn(), None
        if self._libc is not None:
            self._libc.malloc_trim(0)
        before = self._read("VmRSS")
        self._reset()
        out = fn()
        peak = self._read("VmHWM")
        return out, max(0, peak - before) / MiB
