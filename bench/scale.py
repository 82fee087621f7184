"""SCALE: memory per idle connection, and cost per message with a full queue.

Idle connections: one worker (``--workers 1``); the harness opens plain TCP
connections, reads each banner, and leaves them idle. The figure is the
growth of the worker's PSS divided by the number of connections. Kernel
socket buffers are not in any process's PSS and are not counted.

Queued messages: the deferred queue is filled before mailfast starts by
writing files in its own format (a JSON envelope line, then the message),
each with an mtime a day ahead so that no worker tries to deliver it during
the benchmark. Then the LOCAL load runs as in e2e, and the figures must not
depend on how many messages wait in the queue. One scan of the deferred
directory (what each worker's queue runner does every ``scan_interval_s``)
is also timed in the harness.
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import statistics
import sys
import time
from pathlib import Path

from e2e import LOCAL_RECIPIENT, WARM_UP_MESSAGES, Plan
from loadgen import Load, timed_run
from procstat import pss_kib
from report import Row, median_range, mib, verdict
from servers import Mailfast, count_files, empty_directory

IDLE_TARGET_KIB = 10.0
FLAT_TOLERANCE = 0.15  # msg/s and CPU/msg against the empty queue; runs vary ~10%
SETTLE_S = 1.0  # let the worker finish allocating before reading its PSS
QUEUED_PAYLOAD = b"x" * 72 + b"\r\n"
QUEUE_AHEAD_S = 86_400.0
RUNNER_FIRST_SCAN_S = 1.5  # the queue runner's first tick (1 s) scans everything


def raise_file_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE (inherited by servers started later)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _open_idle(port: int, count: int, into: list[socket.socket]) -> None:
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10.0)
        banner = b""
        while b"\n" not in banner:
            chunk = sock.recv(512)
            if not chunk:
                raise ConnectionError("closed before the banner")
            banner += chunk
        if not banner.startswith(b"220"):
            raise ConnectionError(f"banner {banner[:60]!r}")
        into.append(sock)


def idle_connections(
    workdir: Path, source: Path, sizes: list[int], progress
) -> list[Row]:
    limit = raise_file_limit(max(sizes) + 1024)
    if limit < max(sizes) + 64:
        row = Row(
            "SCALE", f"idle connections: RLIMIT_NOFILE is {limit}", mailfast="n/a"
        )
        return [row]
    mailfast = Mailfast(workdir / "mailfast-idle", source, workers=1)
    rows = []
    sockets: list[socket.socket] = []
    try:
        mailfast.start()
        [worker] = mailfast.worker_pids()
        # Warm up the code paths of a connection before the baseline.
        _open_idle(mailfast.port, 100, sockets)
        for sock in sockets:
            sock.close()
        sockets.clear()
        time.sleep(SETTLE_S)
        baseline = pss_kib(worker)
        for size in sorted(sizes):
            _open_idle(mailfast.port, size - len(sockets), sockets)
            time.sleep(SETTLE_S)
            grown = pss_kib(worker) - baseline
            per_connection = grown / size
            progress(
                f"mailfast idle: {size} connections, worker PSS "
                f"{mib(baseline)} -> {mib(baseline + grown)}, "
                f"{per_connection:.2f} KiB each"
            )
            row = Row(
                "SCALE", f"{size:,} idle connections, 1 worker: PSS KiB/connection"
            )
            row.mailfast = f"{per_connection:.2f}"
            row.postfix = "-"
            if size >= 10_000:
                row.target = f"<= {IDLE_TARGET_KIB:g} KiB"
                row.verdict = verdict(per_connection <= IDLE_TARGET_KIB)
            row.notes.append(
                f"{size:,} idle: worker PSS {mib(baseline)} before, "
                f"{mib(baseline + grown)} with the connections open"
            )
            rows.append(row)
        if mailfast.proc.poll() is not None:
            raise RuntimeError("mailfast exited while holding idle connections")
    finally:
        for sock in sockets:
            sock.close()
        mailfast.stop()
    problems = mailfast.log_problems()
    if problems:
        rows[-1].notes.append(
            f"mailfast log (idle connections): {len(problems)} lines, "
            f"last: {problems[-1]}"
        )
    return rows


def fill_queue(queue_dir: Path, count: int) -> None:
    """Write ``count`` deferred messages the way mailfast's queue stores them."""
    from mailfast.ids import new_queue_id
    from mailfast.mailqueue import MailQueue, envelope_line

    queue = MailQueue(str(queue_dir))
    queue.create_directories()
    due = time.time() + QUEUE_AHEAD_S
    arrival = time.time()
    for number in range(count):
        queue_id = new_queue_id()
        header = envelope_line(
            queue_id,
            "load@client.test",
            [{"address": f"user{number}@down.test", "notify": [], "orcpt": ""}],
            arrival,
            client_ip="127.0.0.1",
            helo="client.test",
        )
        content = (
            b"Received: from client.test ([127.0.0.1]) by mailfast.bench.test\r\n"
            b"Subject: waiting in the queue\r\n\r\n" + QUEUED_PAYLOAD * 16
        )
        path = os.path.join(queue.deferred_dir, queue_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, header + content)
        finally:
            os.close(fd)
        os.utime(path, (due, due))


def scan_cost_ms(queue_dir: Path) -> float:
    """CPU time of one claim_due over the deferred queue (nothing is due)."""
    from mailfast.mailqueue import MailQueue

    queue = MailQueue(str(queue_dir))
    started = time.process_time()
    claimed = queue.claim_due(time.time(), 1000)
    spent = time.process_time() - started
    if claimed:
        raise RuntimeError(f"{len(claimed)} queued messages were due")
    return 1000 * spent


def queued(
    workdir: Path, source: Path, sizes: list[int], plan: Plan, progress
) -> list[Row]:
    """One mailfast per queue size, all running; their runs alternate."""
    sys.path.insert(0, str(source))
    try:
        import mailfast.mailqueue  # noqa: F401
    except ImportError as exc:
        row = Row("SCALE", "messages already queued", mailfast="n/a")
        row.notes.append(
            f"queued-messages scenario n/a: this tree has no queue ({exc})"
        )
        return [row]
    servers: dict[int, Mailfast] = {}
    scans: dict[int, float] = {}
    results: dict[int, list] = {size: [] for size in sizes}
    try:
        for size in sizes:
            server = Mailfast(
                workdir / f"mailfast-queue-{size}",
                source,
                workers=2,
                sections={"queue": {"directory": "var/queue"}},
            )
            servers[size] = server
            started = time.perf_counter()
            fill_queue(server.queue_dir, size)
            scans[size] = scan_cost_ms(server.queue_dir)
            progress(
                f"queue: {size:,} deferred messages written in "
                f"{time.perf_counter() - started:.1f} s; "
                f"one scan {scans[size]:.1f} ms CPU"
            )
        os.sync()
        for server in servers.values():
            server.start()
        time.sleep(RUNNER_FIRST_SCAN_S)
        warm = Load(
            messages=min(WARM_UP_MESSAGES, plan.messages), recipient=LOCAL_RECIPIENT
        )
        load = Load(messages=plan.messages, recipient=LOCAL_RECIPIENT)
        for server in servers.values():
            _local_run(server, warm, plan)
        for attempt in range(plan.runs):
            for size, server in servers.items():
                result = _local_run(server, load, plan)
                results[size].append(result)
                progress(
                    f"mailfast queue={size:,} run {attempt + 1}: "
                    f"{result.rate:.0f} msg/s, "
                    f"{result.cpu_ms_per_message:.2f} CPU ms/msg, "
                    f"CPUs {result.machine_busy:.0%} busy (others {result.others:.0%})"
                    + ("" if result.valid else f" INVALID: {result.error}")
                )
        left = {
            size: count_files(s.queue_dir / "deferred") for size, s in servers.items()
        }
    finally:
        for server in servers.values():
            server.stop()
    rows = []
    baseline = None
    for size in sizes:
        rows.append(_queue_row(size, results[size], baseline, scans[size]))
        if baseline is None:
            baseline = results[size]
        if left[size] != size:
            rows[-1].notes.append(
                f"{size:,} queued: {left[size]} left in deferred/ after"
            )
        problems = servers[size].log_problems()
        if problems:
            rows[-1].notes.append(
                f"mailfast log (queue={size:,}): {len(problems)} lines, "
                f"last: {problems[-1]}"
            )
        shutil.rmtree(servers[size].workdir, ignore_errors=True)
    return rows


def _local_run(server: Mailfast, load: Load, plan: Plan):
    new = server.maildir_new
    empty_directory(new)
    return timed_run(
        load, server.port, server.pid, lambda: count_files(new), plan.run_timeout_s
    )


def _queue_row(size: int, runs: list, baseline: list | None, scan_ms: float) -> Row:
    valid = [run for run in runs if run.valid]
    row = Row("SCALE", f"LOCAL with {size:,} messages queued: msg/s; CPU ms/msg")
    row.postfix = "-"
    row.notes.extend(
        f"queue={size:,}: invalid run: {r.error}" for r in runs if not r.valid
    )
    row.notes.append(
        f"{size:,} queued: one scan of deferred/ costs {scan_ms:.1f} ms CPU"
        " (each worker scans every queue.scan_interval_s)"
    )
    if not valid:
        row.mailfast = "n/a"
        return row
    rate = statistics.median([r.rate for r in valid])
    cpu = statistics.median([r.cpu_ms_per_message for r in valid])
    row.mailfast = f"{median_range([r.rate for r in valid])}; {cpu:.2f}"
    base = [run for run in baseline or [] if run.valid]
    if base:
        base_rate = statistics.median([r.rate for r in base])
        base_cpu = statistics.median([r.cpu_ms_per_message for r in base])
        row.ratio = f"{rate / base_rate:.2f}x; {cpu / base_cpu:.2f}x"
        row.target = f"flat, within {FLAT_TOLERANCE:.0%}"
        row.verdict = verdict(
            rate >= (1 - FLAT_TOLERANCE) * base_rate
            and cpu <= (1 + FLAT_TOLERANCE) * base_cpu
        )
    return row
