"""Compute resources this process may really use: CPU threads and memory for tiles.

torch starts one intra-op thread per core of the machine. On a shared machine (a CI runner,
a cluster node, a laptop running napari) that is often wrong twice over: the process may be
limited to fewer cores (CPU affinity, a container's cgroup quota), and other processes may
already keep some cores busy. Threads that outnumber the free cores wait on each other at every
barrier: beside one CPU-bound process, two threads on a 2-core machine took 2.6x their idle time
and were 1.5x slower than one thread. So the thread count is chosen from the cores this process
may use, minus the cores other runnable processes occupy now, minus one for the napari GUI when
asked; ``[Training] threads`` / ``--threads`` override it.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
PROC_STAT = Path("/proc/stat")


def allowed_cores(cgroup_cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """Cores this process may run on: CPU affinity, capped by the cgroup v2 CPU quota when there is one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_quota(cgroup_cpu_max)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def cgroup_quota(path: Path = CGROUP_CPU_MAX) -> float | None:
    """The cgroup v2 CPU quota in cores (``cpu.max`` is "QUOTA PERIOD" or "max PERIOD"); None when unlimited."""
    try:
        fields = path.read_text().split()
    except OSError:
        return None
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = float(fields[0]), float(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def busy_cores(samples: int = 5, interval: float = 0.02, proc_stat: Path = PROC_STAT) -> int:
    """Cores kept busy by other processes right now: the fewest runnable tasks seen over a few samples,
    less this process (which is running while it reads). 0 when unknown (not Linux)."""
    seen = []
    for index in range(samples):
        running = _procs_running(proc_stat)
        if running is None:
            return 0
        seen.append(running)
        if index + 1 < samples:
            time.sleep(interval)
    return max(0, min(seen) - 1)


def _procs_running(proc_stat: Path) -> int | None:
    try:
        for line in proc_stat.read_text().splitlines():
            if line.startswith("procs_running"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def choose_threads(requested: int | None = None, *, leave_for_gui: bool = False, busy: int | None = None) -> int:
    """Intra-op threads for torch: ``requested`` when given (> 0), else ``OMP_NUM_THREADS`` when the user
    set it, else the allowed cores minus the cores other processes keep busy, minus one for the GUI when
    ``leave_for_gui``, shared among the processes torchrun started on this node; at least 1."""
    if requested:
        return max(1, int(requested))
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    cores = allowed_cores()
    others = busy_cores() if busy is None else busy
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, (cores - others - (1 if leave_for_gui else 0)) // local_processes)


def apply_threads(requested: int | None = None, *, leave_for_gui: bool = False) -> int:
    """Choose the thread count (see :func:`choose_threads`), give it to torch, and return it."""
    import torch

    threads = choose_threads(requested, leave_for_gui=leave_for_gui)
    torch.set_num_threads(threads)
    return threads


def available_memory(device_type: str = "cpu") -> int:
    """Bytes free for this process on the device: CUDA free memory, or MemAvailable capped by the
    cgroup memory limit. A conservative 2 GB when it cannot be read."""
    if device_type == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return int(free)
    available = _meminfo_available()
    limit = _cgroup_memory_left()
    known = [v for v in (available, limit) if v is not None]
    return min(known) if known else 2 << 30


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_memory_left() -> int | None:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
    except OSError:
        return None
    if limit == "max":
        return None
    try:
        return max(0, int(limit) - int(used))
    except ValueError:
        return None
