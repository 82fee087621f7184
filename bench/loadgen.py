"""One timed run: smtp-source against a server, until every message has arrived.

A run starts smtp-source, waits for it to finish, then waits until the
destination (a Maildir ``new/`` or an smtp-sink) holds every message. Its
time is end to end: from starting the client to the arrival of the last
message, so a server that answers 250 before delivering gains nothing.
Around the run the server's process tree is measured: CPU time before and
after, PSS sampled throughout, and optionally the accept latency seen by a
probe connecting beside the load.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from procstat import CpuMeter, PeakPss

HERE = Path(__file__).resolve().parent
SENDER = "load@client.test"
CLIENT_NAME = "client.test"
PROBE_INTERVAL_S = 0.01
POLL_WHILE_SENDING_S = 0.05  # the destination is not looked at meanwhile
# Afterwards, the destination is polled more often as fewer messages are
# missing: listing a new/ of thousands of files takes a millisecond, which
# should not be taken from a server still delivering.
POLL_PER_MISSING_S = 0.0002  # a server at 5,000 msg/s delivers 1 per 0.2 ms
POLL_MIN_S = 0.005
POLL_MAX_S = 0.1


@dataclass(slots=True)
class Load:
    messages: int = 5000
    sessions: int = 20
    payload_octets: int = 4096
    per_connection: bool = False  # smtp-source -d: many messages per connection
    recipient: str = ""

    def command(self, port: int) -> list[str]:
        command = [
            "smtp-source",
            "-s", str(self.sessions),
            "-m", str(self.messages),
            "-l", str(self.payload_octets),
            "-f", SENDER,
            "-t", self.recipient,
            "-M", CLIENT_NAME,
        ]  # fmt: skip
        if self.per_connection:
            command.append("-d")
        return [*command, f"127.0.0.1:{port}"]


@dataclass(slots=True)
class RunResult:
    messages: int
    arrived: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    client_cpu_s: float = 0.0  # smtp-source's
    machine_busy: float = 0.0  # fraction of all CPUs busy during the run
    others: float = 0.0  # of which neither the server, the client nor the harness
    peak_pss_kib: int = 0
    latencies_s: list[float] = field(default_factory=list)
    probe_failures: int = 0
    error: str = ""

    @property
    def valid(self) -> bool:
        return not self.error and self.arrived >= self.messages

    @property
    def rate(self) -> float:
        return self.messages / self.wall_s if self.wall_s else 0.0

    @property
    def cpu_ms_per_message(self) -> float:
        return 1000.0 * self.cpu_s / self.messages


class Probe:
    """bench/probe.py in its own process, for the duration of a ``with``."""

    def __init__(self, port: int, interval_s: float = PROBE_INTERVAL_S):
        self.port = port
        self.interval_s = interval_s
        self.latencies_s: list[float] = []
        self.failures = 0
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> Probe:
        self._proc = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "probe.py"),
                str(self.port),
                str(self.interval_s),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        return self

    def __exit__(self, *exc_info) -> None:
        self._proc.send_signal(signal.SIGTERM)
        out, _ = self._proc.communicate(timeout=30)
        results = json.loads(out or b"[]")
        self.latencies_s = [latency for latency in results if latency is not None]
        self.failures = len(results) - len(self.latencies_s)


def _poll_interval_s(missing: int) -> float:
    return min(POLL_MAX_S, max(POLL_MIN_S, missing * POLL_PER_MISSING_S))


def timed_run(
    load: Load,
    port: int,
    server_pid: int,
    arrived: Callable[[], int],
    timeout_s: float,
    probe: bool = False,
) -> RunResult:
    """Send ``load`` to ``port``; ``arrived()`` counts the messages delivered so far.

    ``arrived`` must count from zero for this run (the caller empties the
    Maildir or subtracts what a sink had before).
    """
    result = RunResult(load.messages)
    os.sync()  # leave no earlier dirty data for this run's syncs to write
    cpu = CpuMeter(server_pid)
    probe_context = Probe(port) if probe else None
    with PeakPss(server_pid) as pss:
        if probe_context is not None:
            probe_context.__enter__()
        try:
            cpu.start()
            started = time.perf_counter()
            source = subprocess.Popen(
                load.command(port),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            deadline = started + timeout_s
            while source.poll() is None and time.perf_counter() < deadline:
                time.sleep(POLL_WHILE_SENDING_S)
            if source.poll() is None:
                source.kill()
                result.error = f"smtp-source still running after {timeout_s:.0f} s"
            stderr = source.communicate()[1].decode(errors="replace").strip()
            if source.returncode and not result.error:
                result.error = f"smtp-source exit {source.returncode}: {stderr[-300:]}"
            count = arrived()
            while count < load.messages and time.perf_counter() < deadline:
                time.sleep(_poll_interval_s(load.messages - count))
                count = arrived()
            finished = time.perf_counter()
            cpu.stop()
        finally:
            if probe_context is not None:
                probe_context.__exit__(None, None, None)
    result.arrived = count
    result.wall_s = finished - started
    result.cpu_s = cpu.cpu_s
    result.client_cpu_s = cpu.clients_cpu_s
    result.machine_busy = cpu.machine_busy
    result.others = cpu.others
    result.peak_pss_kib = pss.peak_kib
    if probe_context is not None:
        result.latencies_s = probe_context.latencies_s
        result.probe_failures = probe_context.failures
    if count < load.messages and not result.error:
        result.error = f"only {count} of {load.messages} messages arrived"
    return result
