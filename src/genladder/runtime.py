"""Process-wide settings that make CPU training and sampling faster; the CLI applies them at start.

glibc's malloc serves every allocation above its mmap threshold with a fresh ``mmap`` and hands it
back with ``munmap`` when freed. PyTorch on CPU allocates and frees activation buffers of a few
to tens of MB on every layer of every step, so each one is a new mapping whose pages fault in
again: measured here, 1,000 guided 20-step samples of the cpu-fast U-Net took 45.9 s, 10.1 s of it
in the kernel; with the two settings below 32.3 s, 0.2 s in the kernel (batches of 100; of 500:
34.8 s with 2.0 s in the kernel before, 33.7 s with 0.5 s after). Raising the mmap threshold to
512 MB keeps such buffers on the heap, where freed memory is reused, and a high trim threshold
stops the heap being returned to the system after every step. It is the same
remedy as the ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` environment variables or
preloading jemalloc/tcmalloc (Intel's PyTorch CPU tuning guide), done with ``mallopt`` so that
nothing has to be set before Python starts. No library offers it; it is a few lines of ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import time

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h> parameter numbers
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 512 * 1024 * 1024  # glibc 2.36 accepts it; older ones may refuse above 32 MB
TRIM_THRESHOLD = 1024 * 1024 * 1024


def tune_allocator() -> bool:
    """Apply the malloc settings above (glibc on Linux only); True when they took effect."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) or mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)
    return bool(applied) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


# Threads under contention. OpenMP's threads wait for each other at every parallel region, so when another busy
# process holds one of two cores, torch's second thread stalls the first: measured by benchmarks/under_load.py
# (docs/performance.md, "Under load"). Using only the cores that are free at start-up avoids that.


def cpu_ticks() -> tuple[int, int] | None:
    """(all, busy) clock ticks of every CPU since boot, from /proc/stat (busy: all minus idle and iowait); None
    off Linux. Guest time is counted inside user and nice already, so only the first eight fields are summed."""
    try:
        with open("/proc/stat", "rb") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    except (OSError, ValueError, IndexError):
        return None
    total = sum(fields[:8])
    return total, total - idle


def busy_cores(interval: float = 0.1) -> float | None:
    """How many CPUs other processes keep busy: the busy share of the ticks over ``interval`` s, times the CPU
    count (this process sleeps in between, so it counts only the others). None off Linux."""
    before = cpu_ticks()
    time.sleep(interval)
    after = cpu_ticks()
    if before is None or after is None or after[0] <= before[0]:
        return None
    return (after[1] - before[1]) / (after[0] - before[0]) * (os.cpu_count() or 1)


def threads_for(cores: int, busy: float) -> int:
    """Torch threads on ``cores`` when other processes keep ``busy`` CPUs busy: the free ones, at least one."""
    return max(1, min(cores, cores - round(busy)))


def avoid_contention() -> int | None:
    """Lower torch's thread count to the cores left free by other processes (checked once, at start-up).

    Only when nobody chose a count: not with ``OMP_NUM_THREADS`` set, nor when torch already runs one thread.
    Returns the threads now used when it lowered them, else None.
    """
    import torch

    threads = torch.get_num_threads()
    if "OMP_NUM_THREADS" in os.environ or threads <= 1:
        return None
    busy = busy_cores()
    free = threads if busy is None else threads_for(threads, busy)
    if free >= threads:
        return None
    torch.set_num_threads(free)
    return torch.get_num_threads()
