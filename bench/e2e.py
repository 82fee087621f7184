"""LOCAL and RELAY: the same smtp-source load against mailfast and Postfix.

The servers of a scenario run at once (in RELAY each with its own
smtp-sink) and their runs alternate (mailfast, Postfix, mailfast, ...), so
that whatever else the machine does at the time falls on all of them.
Before any timed run each path is checked with one message, then warmed up
with a short untimed load: Postfix has forked its daemons and mailfast has
created its Maildir by then. LOCAL also runs a second mailfast with
``maildir.sync = "fsync"``, which does not depend on what else is dirty on
the file system, as syncfs(2) does.
"""

from __future__ import annotations

import smtplib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from loadgen import SENDER, Load, RunResult, timed_run
from report import Row, median_range, mib, percentile, ratio, verdict
from servers import (
    LOCAL_DOMAIN,
    MAILBOX,
    REMOTE_DOMAIN,
    Mailfast,
    Postfix,
    ServerError,
    SmtpSink,
    count_files,
    empty_directory,
    free_port,
)

CHECK_TIMEOUT_S = 20.0
WARM_UP_MESSAGES = 500
LOCAL_TARGET = 4.0  # mailfast / Postfix, messages per second
RELAY_TARGET = 3.0

LOCAL_RECIPIENT = f"{MAILBOX}@{LOCAL_DOMAIN}"
REMOTE_RECIPIENT = f"bob@{REMOTE_DOMAIN}"


@dataclass(slots=True)
class Plan:
    messages: int
    runs: int
    run_timeout_s: float


@dataclass(slots=True)
class Contender:
    """One server under test, with where its messages arrive."""

    name: str
    server: object  # Mailfast or Postfix
    arrived: Callable[[], int]
    reset: Callable[[], None]
    runs: dict[str, list[RunResult]] = field(default_factory=dict)
    unavailable: str = ""  # why this server has no figure in this scenario


def send_one(port: int, recipient: str) -> str:
    """Send one small message; "" on success, else what went wrong."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=CHECK_TIMEOUT_S) as smtp:
            smtp.sendmail(
                SENDER,
                [recipient],
                b"Subject: benchmark path check\r\n\r\nOne message before timing.\r\n",
            )
    except (OSError, smtplib.SMTPException) as exc:
        return f"{type(exc).__name__}: {exc}"
    return ""


def check_path(contender: Contender, recipient: str) -> str:
    """One message through the path; "" when it arrived."""
    contender.reset()
    problem = send_one(contender.server.port, recipient)
    if problem:
        return problem
    deadline = time.monotonic() + CHECK_TIMEOUT_S
    while contender.arrived() < 1:
        if time.monotonic() > deadline:
            return f"a test message did not arrive within {CHECK_TIMEOUT_S:.0f} s"
        time.sleep(0.05)
    return ""


def sink_counter(sink: SmtpSink) -> tuple[Callable[[], int], Callable[[], None]]:
    """(arrived, reset) for a sink whose total only grows."""
    offset = [0]

    def reset() -> None:
        offset[0] = sink.received()

    return (lambda: sink.received() - offset[0]), reset


def maildir_counter(new: Path) -> tuple[Callable[[], int], Callable[[], None]]:
    return (lambda: count_files(new)), (lambda: empty_directory(new))


def compare(
    contenders: list[Contender],
    recipient: str,
    modes: dict[str, Load],
    plan: Plan,
    probe_mode: str | None,
    progress: Callable[[str], None],
) -> None:
    """Check, warm up, then alternate timed runs of every mode."""
    for contender in contenders:
        if contender.unavailable:
            continue
        problem = check_path(contender, recipient)
        if problem:
            contender.unavailable = problem
            continue
        warm = Load(messages=min(WARM_UP_MESSAGES, plan.messages), recipient=recipient)
        contender.reset()
        timed_run(warm, contender.server.port, contender.server.pid, contender.arrived,
                  plan.run_timeout_s)  # fmt: skip
    for mode, load in modes.items():
        for attempt in range(plan.runs):
            for contender in contenders:
                if contender.unavailable:
                    continue
                contender.reset()
                result = timed_run(
                    load,
                    contender.server.port,
                    contender.server.pid,
                    contender.arrived,
                    plan.run_timeout_s,
                    probe=mode == probe_mode,
                )
                contender.runs.setdefault(mode, []).append(result)
                state = "" if result.valid else f" INVALID: {result.error}"
                progress(
                    f"{contender.name:8} {mode:22} run {attempt + 1}: "
                    f"{result.rate:8.0f} msg/s, "
                    f"{result.cpu_ms_per_message:.2f} CPU ms/msg, "
                    f"PSS {mib(result.peak_pss_kib)}, "
                    f"CPUs {result.machine_busy:.0%} busy "
                    f"(others {result.others:.0%}){state}"
                )


def _modes(plan: Plan, recipient: str) -> dict[str, Load]:
    return {
        "1 msg/connection": Load(messages=plan.messages, recipient=recipient),
        "many msg/connection": Load(
            messages=plan.messages, recipient=recipient, per_connection=True
        ),
    }


def _start(contender: Contender) -> None:
    """Start a contender's server; if it will not, it gets no figure, not a crash."""
    try:
        contender.server.start()
    except (ServerError, OSError, subprocess.SubprocessError) as exc:
        problems = contender.server.log_problems()
        contender.unavailable = f"{exc}" + (
            f"; log: {problems[-1]}" if problems else ""
        )


def local(
    workdir: Path, source: Path, plan: Plan, progress, fsync_variant: bool = True
) -> list[Row]:
    # Nothing listens on the relay port: LOCAL sends nothing to a remote domain.
    postfix = Postfix(workdir / "postfix", relay_port=free_port())
    mailfast = Mailfast(workdir / "mailfast", source, workers=2)
    # The default syncs a whole batch with syncfs(2); fsync(2) per file and
    # directory does not depend on what else is dirty on the file system.
    fsyncing = Mailfast(
        workdir / "mailfast-fsync",
        source,
        workers=2,
        sections={"maildir": {"sync": "fsync"}},
    )
    ours = Contender("mailfast", mailfast, *maildir_counter(mailfast.maildir_new))
    ours_fsync = Contender("mf-fsync", fsyncing, *maildir_counter(fsyncing.maildir_new))
    theirs = Contender("Postfix", postfix, *maildir_counter(postfix.maildir_new))
    contenders = [ours, theirs, ours_fsync] if fsync_variant else [ours, theirs]
    modes = _modes(plan, LOCAL_RECIPIENT)
    try:
        for contender in contenders:
            _start(contender)
        compare(contenders, LOCAL_RECIPIENT, modes, plan, "1 msg/connection", progress)
    finally:
        for server in (mailfast, fsyncing, postfix):
            server.stop()
    rows = rows_for("LOCAL", ours, theirs, modes, LOCAL_TARGET, "1 msg/connection")
    if fsync_variant:
        rows += rows_for(
            "LOCAL",
            ours_fsync,
            theirs,
            modes,
            LOCAL_TARGET,
            variant="maildir.sync=fsync",
        )
    return rows + problem_rows("LOCAL", mailfast, postfix, fsyncing)


def relay(workdir: Path, source: Path, plan: Plan, progress) -> list[Row]:
    mailfast_sink = SmtpSink(workdir / "mailfast-sink")
    postfix_sink = SmtpSink(workdir / "postfix-sink")
    zones, how = None, ""
    mailfast = postfix = None
    try:
        mailfast_sink.start()
        postfix_sink.start()
        zones, how = _dns_for(source)
        relay_settings = {"port": mailfast_sink.port}
        if zones is not None:
            relay_settings.update(smarthost="", nameservers=[f"127.0.0.1:{zones.port}"])
        else:
            relay_settings["smarthost"] = f"[127.0.0.1]:{mailfast_sink.port}"
        mailfast = Mailfast(
            workdir / "mailfast",
            source,
            workers=2,
            sections={"relay": relay_settings, "queue": {"directory": "var/queue"}},
        )
        postfix = Postfix(workdir / "postfix", relay_port=postfix_sink.port)
        contenders = [
            Contender("mailfast", mailfast, *sink_counter(mailfast_sink)),
            Contender("Postfix", postfix, *sink_counter(postfix_sink)),
        ]
        for contender in contenders:
            _start(contender)
        modes = _modes(plan, REMOTE_RECIPIENT)
        compare(contenders, REMOTE_RECIPIENT, modes, plan, None, progress)
        leftovers = _queued_files(mailfast.queue_dir)
    finally:
        for server in (mailfast, postfix, mailfast_sink, postfix_sink, zones):
            if server is not None:
                server.stop()
    rows = rows_for("RELAY", *contenders, modes, RELAY_TARGET)
    rows[0].notes.append(
        f"RELAY: mailfast finds the sink by {how}; Postfix by transport_maps"
    )
    if leftovers:
        rows[0].notes.append(
            f"RELAY: mailfast left {leftovers} files in var/queue"
            " after the sink had every message"
        )
    return rows + problem_rows("RELAY", mailfast, postfix)


def _dns_for(source: Path):
    """A loopback DNS server whose MX for REMOTE_DOMAIN points at the sink.

    Returns (server, how the route was found); (None, ...) when the test
    suite's DNS server cannot be imported, in which case mailfast relays
    through a smarthost at the sink instead.
    """
    sys.path.insert(0, str(source / "tests"))
    try:
        from dnsserver import ZoneServer
    except ImportError as exc:
        return None, f"smarthost (no tests/dnsserver.py: {exc})"
    finally:
        sys.path.remove(str(source / "tests"))
    zones = ZoneServer(
        {
            REMOTE_DOMAIN: {
                "MX": f"10 mx.{REMOTE_DOMAIN}",
                "SOA": f"ns.{REMOTE_DOMAIN} hostmaster.{REMOTE_DOMAIN}"
                " 1 3600 600 86400 300",
            },
            f"mx.{REMOTE_DOMAIN}": {"A": "127.0.0.1"},
        }
    )
    zones.start()
    return zones, "MX lookup"


def _queued_files(queue_dir: Path) -> int:
    total = 0
    for name in ("deferred", "active"):
        directory = queue_dir / name
        if directory.is_dir():
            for path in directory.rglob("*"):
                total += path.is_file()
    return total


def rows_for(
    section: str,
    ours: Contender,
    theirs: Contender,
    modes: dict[str, Load],
    target: float,
    latency_mode: str | None = None,
    variant: str = "",
) -> list[Row]:
    """The rows of one scenario; a ``variant`` of mailfast gets rate and CPU only."""
    rows = []
    for mode in modes:
        ours_runs = [r for r in ours.runs.get(mode, []) if r.valid]
        theirs_runs = [r for r in theirs.runs.get(mode, []) if r.valid]
        label = f"{section} {mode}{', ' + variant if variant else ''}"
        rate_row = Row(section, f"{label}: msg/s median (min-max)")
        rate_row.mailfast = _figure(ours, [r.rate for r in ours_runs])
        rate_row.postfix = _figure(theirs, [r.rate for r in theirs_runs])
        ours_rate = _median([r.rate for r in ours_runs])
        theirs_rate = _median([r.rate for r in theirs_runs])
        rate_row.ratio = ratio(ours_rate, theirs_rate)
        rate_row.target = f">= {target:g}x Postfix"
        rate_row.verdict = verdict(
            ours_rate / theirs_rate >= target if ours_rate and theirs_rate else None
        )
        for contender in (ours, theirs) if not variant else (ours,):
            if contender.unavailable and mode == next(iter(modes)):
                rate_row.notes.append(
                    f"{contender.name} {section}: n/a ({contender.unavailable})"
                )
            invalid = [r for r in contender.runs.get(mode, []) if not r.valid]
            for run in invalid:
                rate_row.notes.append(
                    f"{contender.name} {label}: invalid run: {run.error}"
                )
        rows.append(rate_row)

        cpu_row = Row(section, f"{label}: server CPU ms/msg")
        ours_cpu = _median([r.cpu_ms_per_message for r in ours_runs])
        theirs_cpu = _median([r.cpu_ms_per_message for r in theirs_runs])
        cpu_row.mailfast = f"{ours_cpu:.2f}" if ours_cpu else "n/a"
        cpu_row.postfix = f"{theirs_cpu:.2f}" if theirs_cpu else "n/a"
        cpu_row.ratio = ratio(ours_cpu, theirs_cpu)
        rows.append(cpu_row)
        if variant:
            continue

        pss_row = Row(section, f"{label}: peak PSS of the process tree")
        ours_pss = max((r.peak_pss_kib for r in ours_runs), default=0)
        theirs_pss = max((r.peak_pss_kib for r in theirs_runs), default=0)
        pss_row.mailfast = mib(ours_pss) if ours_pss else "n/a"
        pss_row.postfix = mib(theirs_pss) if theirs_pss else "n/a"
        pss_row.ratio = ratio(ours_pss, theirs_pss)
        if section == "LOCAL":
            pss_row.target = "<= Postfix"
            pss_row.verdict = verdict(
                ours_pss <= theirs_pss if ours_pss and theirs_pss else None
            )
        rows.append(pss_row)

        busy_row = Row(section, f"{label}: CPUs busy (others); smtp-source CPU ms/msg")
        busy_row.mailfast = _busy(ours_runs)
        busy_row.postfix = _busy(theirs_runs)
        rows.append(busy_row)

        if mode == latency_mode:
            latency_row = Row(section, f"{label}: accept latency p50 / p99 (ms)")
            latency_row.mailfast = _latency(ours_runs)
            latency_row.postfix = _latency(theirs_runs)
            rows.append(latency_row)
            failures = sum(r.probe_failures for r in ours_runs + theirs_runs)
            if failures:
                latency_row.notes.append(f"{failures} probe connections failed")
    return rows


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _figure(contender: Contender, rates: list[float]) -> str:
    if contender.unavailable:
        return "n/a (see notes)"
    if not rates:
        return "n/a (no valid run)"
    return median_range(rates)


def _busy(runs: list[RunResult]) -> str:
    if not runs:
        return "n/a"
    busy = statistics.median([run.machine_busy for run in runs])
    others = statistics.median([run.others for run in runs])
    client = statistics.median([1000 * run.client_cpu_s / run.messages for run in runs])
    return f"{busy:.0%} ({others:.0%}); {client:.2f}"


def _latency(runs: list[RunResult]) -> str:
    samples = [latency for run in runs for latency in run.latencies_s]
    if not samples:
        return "n/a"
    return (
        f"{1000 * percentile(samples, 0.50):.2f} / "
        f"{1000 * percentile(samples, 0.99):.2f}"
        f" (n={len(samples)})"
    )


def problem_rows(
    section: str, mailfast: Mailfast | None, postfix: Postfix | None, *others: Mailfast
) -> list[Row]:
    """Nothing unless a log holds warnings; then a row that counts them, and notes."""
    row = Row(section, f"{section}: lines at WARNING or above in the server logs")
    for server in (mailfast, *others):
        if server is None:
            continue
        problems = server.log_problems()
        if problems:
            row.mailfast = str(int(row.mailfast or 0) + len(problems))
            row.notes.append(
                f"{section}: {server.workdir.name} log has {len(problems)} lines, "
                f"last: {problems[-1]}"
            )
    problems = postfix.log_problems() if postfix is not None else []
    if problems:
        row.postfix = str(len(problems))
        row.notes.append(
            f"{section}: Postfix log has {len(problems)} warnings, last: {problems[-1]}"
        )
    return [row] if row.notes else []
