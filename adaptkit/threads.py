"""CPU threads: how many intra-op threads torch runs, and how OpenMP's idle threads wait. The one home.

torch's default is one OpenMP thread per core with threads that spin at every barrier. On a
machine whose cores other work also uses (a shared node, a test suite, data loaders), a
spinning team waits for its slowest, descheduled member at every operator: on two busy cores
500 tiny training steps took 88-185 s against 9-12 s with one thread. So, before torch loads
(`prepare`, called first thing by the CLI entry), unless the user set `OMP_NUM_THREADS`:

- OpenMP's wait policy is PASSIVE (idle threads sleep instead of spinning and leave the core to
  whoever needs it), unless the user set `OMP_WAIT_POLICY`;
- the thread count is the cores this process may use (its CPU affinity, capped by a cgroup CPU
  quota: a container's 2-CPU quota on a 64-core host is 2 threads), less the cores other
  processes keep busy right now (the run queue), at least one.

A user's `OMP_NUM_THREADS` is kept as given (with their own wait policy or OpenMP's default);
`train --set threads=N` (also in study configs) sets torch's count for a run (`apply`).
Stdlib only: the CLI imports this before torch.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import MutableMapping, Optional

CGROUP_ROOT = Path("/sys/fs/cgroup")


def affinity_cores() -> int:
    """The CPUs this process may run on (its affinity mask), or the machine's count where there is no mask."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def quota_cores(root: Path = CGROUP_ROOT) -> Optional[float]:
    """The cgroup's CPU quota in cores (v2 `cpu.max`, v1 `cpu.cfs_quota_us / cpu.cfs_period_us`); None if unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def usable_cores(root: Path = CGROUP_ROOT) -> int:
    """The cores this process may really use: its affinity, capped by the cgroup quota (rounded up), at least 1."""
    cores = affinity_cores()
    quota = quota_cores(root)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def busy_elsewhere(loadavg: Path = Path("/proc/loadavg")) -> int:
    """Runnable tasks besides this one right now (the 4th field of /proc/loadavg: running/total); 0 if unknown."""
    try:
        running = int(loadavg.read_text().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return 0
    return max(0, running - 1)  # the reading process itself is running


def default_threads(cores: Optional[int] = None, busy: Optional[int] = None) -> int:
    """Intra-op threads for a process that may use `cores` while `busy` other tasks run: the idle cores, at least 1."""
    cores = usable_cores() if cores is None else cores
    busy = busy_elsewhere() if busy is None else busy
    return max(1, min(cores, cores - busy))


def prepare(environ: MutableMapping[str, str] = os.environ) -> None:
    """Before torch is imported: choose OpenMP's thread count and wait policy unless the user set OMP_NUM_THREADS.
    The choice goes into the environment, so that torch, MKL and the command's child processes all see it.

    Other work on the cores at start: the idle cores only, with PASSIVE waits (spinning threads stall on busy
    cores: 2.4x one thread's time measured, benchmarks/bench_threads.py). Idle cores: every usable core with
    OpenMP's own wait policy, which is the fastest there (PASSIVE waits cost 1.3x on an idle machine)."""
    if environ.get("OMP_NUM_THREADS", "").strip():
        return
    cores = usable_cores()
    count = default_threads(cores, busy_elsewhere())
    if count < cores:
        environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    environ["OMP_NUM_THREADS"] = str(count)


def apply(threads: Optional[int]) -> None:
    """A run's `threads` setting (None: keep what `prepare` or the user's OMP_NUM_THREADS chose)."""
    if threads is None:
        return
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
