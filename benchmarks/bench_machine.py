"""What the figures depend on: the machine's peak, its other load, the thread count, and peak memory.

Every number of the suite is only comparable with another taken on the same machine, torch build
and thread count while nothing else ran; this module measures and reports those conditions.
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import statistics
import time
from dataclasses import dataclass

import torch

from genladder.runtime import cpu_ticks

# Other processes using more than this many cores on average make the figures not comparable.
BUSY_CORES = 0.25


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, *, warmup: int, repeats: int, device: torch.device) -> tuple[float, list[float]]:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed calls (nanoGPT bench.py).

    Each call is timed on its own between device synchronisations. Returns (median, all times).
    """
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def matmul_peak_gflops(device: torch.device, size: int, repeats: int = 5) -> float:
    """The machine's reference peak: GFLOP/s of an fp32 size×size matrix product (2·size³ FLOP), median.

    On a CPU this is what the BLAS reaches with torch's current thread count; TF32 stays off on CUDA
    (torch's default for matmul), so the peak is true fp32 like the benchmarked models.
    """
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, generator=generator)
    b = torch.randn(size, size, device=device, generator=generator)
    seconds, _ = median_seconds(lambda: torch.mm(a, b), warmup=1, repeats=repeats, device=device)
    return 2 * size**3 / seconds / 1e9


# ------------------------------------------------------------------------------------ other load
def _busy_jiffies() -> int | None:
    """Clock ticks all CPUs spent busy since boot (genladder.runtime.cpu_ticks); None off Linux."""
    ticks = cpu_ticks()
    return None if ticks is None else ticks[1]


class OtherLoad:
    """Average CPU use of *other* processes, in cores, from when it was created to ``cores()``.

    /proc/stat gives every process's busy time; this process's own CPU time (all its threads,
    ``time.process_time``) is subtracted. Off Linux it reports None.
    """

    def __init__(self) -> None:
        self._ticks_per_s = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._start = (time.perf_counter(), _busy_jiffies(), time.process_time())

    def cores(self) -> float | None:
        wall0, busy0, own0 = self._start
        busy1 = _busy_jiffies()
        if busy0 is None or busy1 is None:
            return None
        wall = max(time.perf_counter() - wall0, 1e-6)
        others = (busy1 - busy0) / self._ticks_per_s - (time.process_time() - own0)
        return max(0.0, others / wall)


def load_before_start(window_s: float) -> float | None:
    """Other processes' CPU use in cores over a ``window_s`` pause before anything is measured."""
    monitor = OtherLoad()
    time.sleep(window_s)
    return monitor.cores()


def busy_warning(other_cores: float | None, when: str) -> str | None:
    """One line when other processes loaded the machine, else None."""
    if other_cores is None or other_cores < BUSY_CORES:
        return None
    return (f"WARNING: other processes used {other_cores:.2f} CPU cores on average {when}; "
            "the figures are not comparable (rerun on a quiet machine)")


def loadavg() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


# ---------------------------------------------------------------------------------- peak memory
def _release_free_memory() -> None:
    """Return freed heap memory to the OS (glibc ``malloc_trim``) so that the next RSS baseline is honest."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak memory a block of work adds over what was held when it started, in MB (``with PeakMemory(dev) as m``).

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only). CPU: the resident-set high-water mark
    (VmHWM, reset by writing 5 to /proc/self/clear_refs) minus the resident size at the start;
    tracemalloc would not see torch's allocations. ``mb`` is None where neither is available.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mb: float | None = None

    def __enter__(self) -> PeakMemory:
        _release_free_memory()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        self._base = None
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            self._base = _status_kib("VmRSS")
        except OSError:
            pass
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
        elif self._base is not None:
            peak = _status_kib("VmHWM")
            self.mb = (peak - self._base) / 1024 if peak is not None else None


# ------------------------------------------------------------------------------------ the machine
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class MachineInfo:
    """The conditions of a run, printed above the tables and stored in the JSON."""

    device: str
    device_name: str
    torch_version: str
    torch_threads: int
    torch_interop_threads: int
    omp_num_threads: str | None
    usable_cpus: int
    python: str


def machine_info(device: torch.device) -> MachineInfo:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model()
    return MachineInfo(
        device=str(device), device_name=name, torch_version=torch.__version__,
        torch_threads=torch.get_num_threads(), torch_interop_threads=torch.get_num_interop_threads(),
        omp_num_threads=os.environ.get("OMP_NUM_THREADS"), usable_cpus=usable, python=platform.python_version(),
    )
