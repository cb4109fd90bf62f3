"""How busy the machine is: this process tree against everything else, from /proc.

On a shared machine other processes steal cycles from the engine. Linux's /proc tells
how much CPU went to processes outside this benchmark's process tree ("foreign"), so
every sample records it, and samples can wait for a quiet moment. Linux only; elsewhere
the monitor reports nothing and nobody waits.
"""

from __future__ import annotations

import os
import time

__all__ = ["CpuMonitor", "wait_for_quiet"]


def _stat_fields(pid: int | str) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _process_tree(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat_fields(entry)) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    tree, stack = set(), [root]
    while stack:
        pid = stack.pop()
        tree.add(pid)
        stack.extend(children.get(pid, []))
    return tree


def _tree_ticks(pids: set[int]) -> dict[int, int]:
    ticks = {}
    for pid in pids:
        if (fields := _stat_fields(pid)) is not None:
            ticks[pid] = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks


def _system_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot; steal counts as busy."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


class CpuMonitor:
    """Cores used by this process tree and by everything else between start and stop.

    Linux only; elsewhere ``stop`` returns an empty dict.
    """

    def __init__(self) -> None:
        self.enabled = os.path.exists("/proc/stat")
        self.ncpu = os.cpu_count() or 1  # /proc/stat's first line sums all CPUs

    def start(self) -> CpuMonitor:
        if self.enabled:
            self._pids = _process_tree(os.getpid())
            self._own = _tree_ticks(self._pids)
            self._sys = _system_ticks()
        return self

    def stop(self) -> dict:
        if not self.enabled:
            return {}
        busy1, total1 = _system_ticks()
        # children started since ``start`` (engine processes) count as our own
        own = _tree_ticks(self._pids | _process_tree(os.getpid()))
        own_delta = sum(t - self._own.get(pid, 0) for pid, t in own.items())
        busy, total = busy1 - self._sys[0], total1 - self._sys[1]
        if total <= 0:
            return {"own_cores": 0.0, "foreign_cores": 0.0}
        scale = self.ncpu / total  # ticks -> average cores busy over the interval
        return {
            "own_cores": own_delta * scale,
            "foreign_cores": max(busy - own_delta, 0) * scale,
        }


def wait_for_quiet(max_wait_s: float, max_cores: float, probe_s: float = 1.0) -> dict:
    """Wait (up to ``max_wait_s``) until other processes use < ``max_cores`` cores."""
    start = time.perf_counter()
    monitor = CpuMonitor()
    if not monitor.enabled or max_wait_s <= 0:
        return {"waited_s": 0.0}
    while True:
        monitor.start()
        time.sleep(probe_s)
        foreign = monitor.stop()["foreign_cores"]
        waited = time.perf_counter() - start
        if foreign < max_cores or waited >= max_wait_s:
            return {"waited_s": waited, "foreign_before": foreign}
