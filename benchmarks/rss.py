"""Peak resident memory of this process, for the benchmarks that measure it in a child process.

A child's `ru_maxrss` is not its own peak on Linux: exec keeps the larger of the parent's high-water mark
and the new program's, so every child of a benchmark that has itself trained a model reports at least
the parent's peak (measured: a child of a process that had touched 1.5 GB reported 1,513 MiB from
`getrusage` and 13 MiB from VmHWM). VmHWM in /proc/self/status is the high-water mark of the process's
own memory map, which exec starts afresh.
"""

from __future__ import annotations

import re
import resource
from pathlib import Path

STATUS = Path("/proc/self/status")


def peak_rss_mib() -> float:
    """This process's peak resident set in MiB (VmHWM; where /proc is missing, ru_maxrss, which may
    include the parent's peak as above)."""
    if STATUS.exists():
        return int(re.search(r"VmHWM:\s+(\d+)", STATUS.read_text()).group(1)) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Start the peak over from the current resident set (Linux: clear_refs 5; elsewhere nothing)."""
    if STATUS.exists():
        Path("/proc/self/clear_refs").write_text("5")
