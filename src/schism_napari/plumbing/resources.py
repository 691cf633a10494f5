"""Compute resources this process may really use: CPU threads and memory for tiles.

torch starts one intra-op thread per core of the machine. On a shared machine (a CI runner,
a cluster node, a laptop running napari) that is often wrong twice over: the process may be
limited to fewer cores (CPU affinity, a container's cgroup quota), and other processes may
already keep some cores busy. Threads that outnumber the free cores wait on each other at every
barrier: beside one CPU-bound process, two threads on a 2-core machine took 2.6x their idle time
and were 1.5x slower than one thread. So the thread count is chosen from the cores this process
may use, minus the cores other runnable processes really take from it (weighed by priority: a
niced neighbour takes almost nothing); ``[Training] threads`` / ``--threads`` override it.

In napari the GUI thread must stay responsive while a worker trains or predicts. Leaving it a whole
core halves training on a 2-core machine. Where threads can be reniced (Linux), the worker's threads
run at :data:`WORKER_NICE` instead and use every free core: the GUI thread preempts them whenever it
has work. Measured on 2 cores (a training thread beside a 10 ms GUI tick): two reniced threads made
1.75x the steps of one thread, with the same tick latency (p99 10.4 ms against 14 ms for two threads
at normal priority). In napari (``benchmarks/bench_first_minutes.py``, ISBI, 1.5 minutes): 58
optimizer steps instead of 31, the event loop's 10 ms ticks at p99 16 ms instead of 17 ms. Only the
worker thread is reniced (its threads inherit it): renicing Qt's and the OpenGL driver's threads too
held the forest preview back until training ended. Elsewhere one core is left to the GUI.
"""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
PROC = Path("/proc")
FAIR_SHARE_PER_NICE = 1.25  # the kernel's CFS weights: each nice level gives about 1.25x less CPU
WORKER_NICE = 10  # how much nicer than the GUI thread a napari worker's threads run (about 9x less weight)


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


def busy_cores(samples: int = 5, interval: float = 0.02, proc: Path = PROC) -> int:
    """Cores that other processes really take from this one right now. 0 when unknown (not Linux).

    Each runnable task of another process counts as much CPU as the kernel's fair scheduler would
    give it beside a task of ours: a whole core at our priority or better, about 1.25 times less
    per nice level below it. A ``nice -n 19`` neighbour counts for 1.4 % of a core, not a core: it
    leaves a normal-priority run almost all its time (counting it as a busy core halved the threads
    of a 2-core machine, and a CT run scored 0.65 instead of 0.82 in the same minutes). The fewest
    seen over a few samples, rounded to whole cores."""
    own_nice = _own_nice()
    seen = []
    for index in range(samples):
        load = _competing_load(proc, own_nice)
        if load is None:
            return 0
        seen.append(load)
        if index + 1 < samples:
            time.sleep(interval)
    return max(0, math.floor(min(seen) + 0.5))


def _own_nice() -> int:
    try:
        return os.getpriority(os.PRIO_PROCESS, 0)
    except (AttributeError, OSError):
        return 0


def _competing_load(proc: Path, own_nice: int) -> float | None:
    """Runnable tasks of other processes, each weighted by its share against a task at ``own_nice``."""
    own = str(os.getpid())
    try:
        processes = [entry.path for entry in os.scandir(proc) if entry.name.isdigit() and entry.name != own]
    except OSError:
        return None
    load = 0.0
    for process in processes:
        try:
            tasks = [entry.path for entry in os.scandir(os.path.join(process, "task"))]
        except OSError:  # the process ended meanwhile
            continue
        for task in tasks:
            state = _task_state(Path(task) / "stat")
            if state is not None and state[0] == "R":
                load += min(1.0, FAIR_SHARE_PER_NICE ** (own_nice - state[1]))
    return load


def _task_state(stat: Path) -> tuple[str, int] | None:
    """(state letter, nice) of one task from its ``stat`` file (fields after the command's parenthesis)."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[16])
    except (OSError, IndexError, ValueError):
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


RECHECK_EVERY_S = 30.0  # a long run looks again at what competes for the cores this often


class _ThreadChoice:
    """The last automatic choice of :func:`apply_threads`, so a long run can look again."""

    leave_for_gui: bool | None = None  # None: the count was set by the user (or never chosen)
    checked_at = 0.0


def apply_threads(requested: int | None = None, *, leave_for_gui: bool = False) -> int:
    """Choose the thread count (see :func:`choose_threads`), give it to torch, and return it.

    ``leave_for_gui`` (a napari worker): the calling thread is reniced (:func:`yield_to_gui`), and its
    threads take every free core; where that is not possible (not Linux, or called from the GUI
    thread itself), one core is left to the GUI."""
    import torch

    yielding = leave_for_gui and yield_to_gui()
    gui_core = leave_for_gui and not yielding
    threads = choose_threads(requested, leave_for_gui=gui_core)
    torch.set_num_threads(threads)
    automatic = not requested and not os.environ.get("OMP_NUM_THREADS", "").isdigit()
    _ThreadChoice.leave_for_gui = gui_core if automatic else None
    _ThreadChoice.checked_at = time.monotonic()
    return threads


def yield_to_gui(increment: int = WORKER_NICE) -> bool:
    """Renice the calling worker thread to ``increment`` above the GUI (main) thread's nice, so the
    GUI thread preempts it; the threads it starts from then on (torch's OpenMP team, which belongs
    to the thread that starts a parallel region; the forest's joblib threads) inherit it. Other
    threads keep their priority: Qt's and the OpenGL driver's serve the GUI (renicing those too
    held the forest preview back until training ended). False, and nothing changed, when called from
    the main thread or where a thread cannot be reniced on its own (Linux renices one thread by id)."""
    main = threading.main_thread()
    if threading.current_thread() is main or not hasattr(os, "setpriority") or not Path("/proc/self/task").is_dir():
        return False
    own = threading.get_native_id()
    try:
        target = os.getpriority(os.PRIO_PROCESS, main.native_id or os.getpid()) + increment
        if os.getpriority(os.PRIO_PROCESS, own) < target:
            os.setpriority(os.PRIO_PROCESS, own, target)
        return os.getpriority(os.PRIO_PROCESS, own) >= target
    except OSError:
        return False


def recheck_threads(every: float = RECHECK_EVERY_S) -> int | None:
    """During a long run (at epoch ends): choose the thread count again when it was chosen
    automatically and ``every`` seconds have passed, since neighbours come and go. Returns the new
    count when it changed, else None."""
    if _ThreadChoice.leave_for_gui is None or time.monotonic() - _ThreadChoice.checked_at < every:
        return None
    import torch

    _ThreadChoice.checked_at = time.monotonic()
    threads = choose_threads(None, leave_for_gui=_ThreadChoice.leave_for_gui)
    if threads == torch.get_num_threads():
        return None
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
