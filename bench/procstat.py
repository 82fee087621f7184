"""What the benchmark reads from /proc: process trees, their CPU time and PSS.

A server is measured as a whole: its master and every process below it. CPU
time is read as utime + stime of each live process plus cutime + cstime,
which the kernel adds to a parent when it reaps a child; so a Postfix smtpd
that served its hundred sessions and exited between two readings is still
counted, once, in its master. PSS (proportional set size) splits each
shared page among the processes that map it, so summing it over a tree
counts shared libraries and copy-on-write pages from the fork once.
"""

from __future__ import annotations

import os
import resource
import threading
import time

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
PSS_SAMPLE_INTERVAL_S = 0.3

# Indices into the fields of /proc/<pid>/stat that follow the command name:
# field 3 (state) is index 0, see proc(5).
_PPID = 1
_UTIME = 11  # then stime, cutime, cstime


def _stat_fields(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:  # the process ended while we looked
        return None
    # The command name may hold spaces and parentheses: split after the last ")".
    return stat[stat.rindex(b")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants that are alive now (root first)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[_PPID]), []).append(int(entry.name))
    tree = [root]
    for pid in tree:  # grows while it is walked: breadth first
        tree.extend(children.get(pid, ()))
    return tree


def tree_cpu_s(root: int) -> float:
    """CPU seconds used so far by the tree under ``root``, reaped children included."""
    ticks = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += sum(int(value) for value in fields[_UTIME : _UTIME + 4])
    return ticks / CLOCK_TICKS_PER_S


def pss_kib(pid: int) -> int:
    """The PSS of one process in KiB; 0 if it has gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def tree_pss_kib(root: int) -> int:
    return sum(pss_kib(pid) for pid in process_tree(root))


class PeakPss:
    """Samples the PSS of a process tree in a thread; ``peak_kib`` is the largest sum.

    Use as a context manager around the load. Reading smaps_rollup walks the
    page tables of each process, so sampling is kept to a few times a second.
    """

    def __init__(self, root: int, interval_s: float = PSS_SAMPLE_INTERVAL_S):
        self.root = root
        self.interval_s = interval_s
        self.peak_kib = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pss", daemon=True)

    def _run(self) -> None:
        while True:
            self.peak_kib = max(self.peak_kib, tree_pss_kib(self.root))
            self.samples += 1
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> PeakPss:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        # One last sample, so a load shorter than the interval is still seen.
        self.peak_kib = max(self.peak_kib, tree_pss_kib(self.root))


def machine_busy_s() -> float:
    """CPU seconds all CPUs spent on anything but idle and I/O wait (/proc/stat)."""
    with open("/proc/stat", "rb") as f:
        fields = [int(value) for value in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is in user)
    busy = sum(fields[:3]) + sum(fields[5:8])
    return busy / CLOCK_TICKS_PER_S


def children_cpu_s() -> float:
    """CPU seconds of this process's children that have been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """Between ``start`` and ``stop``: CPU seconds of a tree, of the client
    processes this harness waited for, and of the whole machine.

    ``others`` is the share of all CPUs that neither the server, nor the
    clients, nor this harness used: other people's work on a shared
    machine, or kernel threads. When it is large, the run measured the
    machine's neighbours as much as the server.
    """

    def __init__(self, root: int):
        self.root = root
        self.cpu_s = 0.0
        self.clients_cpu_s = 0.0
        self.machine_busy = 0.0  # fraction of all CPUs
        self.others = 0.0  # fraction of all CPUs
        self.wall_s = 0.0
        self._before = (0.0, 0.0, 0.0, 0.0)
        self._started = 0.0

    @staticmethod
    def _now(root: int) -> tuple[float, float, float, float]:
        return tree_cpu_s(root), children_cpu_s(), own_cpu_s(), machine_busy_s()

    def start(self) -> None:
        self._before = self._now(self.root)
        self._started = time.perf_counter()

    def stop(self) -> None:
        self.wall_s = time.perf_counter() - self._started
        tree, clients, own, machine = (
            after - before
            for after, before in zip(self._now(self.root), self._before, strict=True)
        )
        self.cpu_s = tree
        self.clients_cpu_s = clients
        capacity = self.wall_s * (os.cpu_count() or 1)
        self.machine_busy = machine / capacity
        self.others = max(0.0, machine - tree - clients - own) / capacity
