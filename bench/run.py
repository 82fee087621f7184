"""mailfast's benchmark suite: ``make bench`` runs this file.

It runs, in this order and each only if selected with ``--only``:

  micro   the parser and the session, in memory (pytest-benchmark, compared
          with the baseline saved under bench/baselines/)
  local   smtp-source into a Maildir: mailfast against a private Postfix
  relay   smtp-source to a remote domain, relayed to smtp-sink: both again
  scale   idle connections on one worker; LOCAL with a full queue

and prints one table, with each target and whether it was met. It never
fails on a missed target: the exit status is 0 unless the harness itself
breaks. Progress goes to standard error; the table to standard output, and
every figure to bench/results/<time>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import e2e  # noqa: E402
import scale  # noqa: E402
from procstat import machine_busy_s  # noqa: E402
from report import Row, render, verdict  # noqa: E402
from servers import require_tools  # noqa: E402

SCENARIOS = ("micro", "local", "relay", "scale")
BASELINES = HERE / "baselines"
RESULTS = HERE / "results"
PARSER_TARGET_MB_S = 1000.0  # on 100 KiB bodies
BUSY_WARNING = 0.10  # other work on the machine before we start

FULL = {
    "plan": e2e.Plan(messages=5000, runs=5, run_timeout_s=300.0),
    "idle": [1_000, 10_000],
    "queued": [0, 1_000, 100_000],
    "micro_max_time_s": "1.0",
}
QUICK = {
    "plan": e2e.Plan(messages=1000, runs=1, run_timeout_s=120.0),
    "idle": [1_000],
    "queued": [0, 1_000],
    "micro_max_time_s": "0.1",
}


def progress(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def machine() -> str:
    """One line: CPUs, memory, and the disk the temporary files go to."""
    memory = subprocess.run(
        ["free", "-h"], capture_output=True, text=True
    ).stdout.split()
    total = memory[memory.index("Mem:") + 1] if "Mem:" in memory else "?"
    disk = subprocess.run(
        ["findmnt", "-n", "-o", "SOURCE,FSTYPE", "-T", tempfile.gettempdir()],
        capture_output=True,
        text=True,
    ).stdout.split()
    kind = ""
    if disk:
        device = Path(disk[0]).name
        try:
            rotational = (Path("/sys/block") / device / "queue/rotational").read_text()
            kind = "rotational" if rotational.strip() == "1" else "non-rotational"
        except OSError:
            pass
    return (
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"{total} RAM, {' '.join(disk)} {kind}, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def background_load(window_s: float = 1.0) -> float:
    """How busy the CPUs are before we start anything: others' load skews us."""
    before = machine_busy_s()
    time.sleep(window_s)
    return (machine_busy_s() - before) / (window_s * (os.cpu_count() or 1))


# --- micro --------------------------------------------------------------------


def latest_baseline() -> Path | None:
    files = sorted(BASELINES.glob("*/*.json"), key=lambda path: path.name)
    return files[-1] if files else None


def micro(source: Path, settings: dict, save: bool, workdir: Path) -> list[Row]:
    output = workdir / "micro.json"
    log = RESULTS / "micro.log"
    command = [
        sys.executable, "-m", "pytest",
        "-c", str(HERE / "pytest.ini"),
        "--rootdir", str(HERE),
        str(HERE / "bench_parser.py"),
        str(HERE / "bench_session.py"),
        "-q",
        f"--benchmark-max-time={settings['micro_max_time_s']}",
        f"--benchmark-json={output}",
        f"--benchmark-storage=file://{BASELINES}",
        "--benchmark-columns=min,median,max,rounds",
    ]  # fmt: skip
    baseline = latest_baseline()
    if baseline is not None:
        command.append("--benchmark-compare")
    if save:
        command.append(f"--benchmark-save={datetime.date.today().isoformat()}")
    env = dict(os.environ, PYTHONPATH=str(source))
    progress("micro: " + " ".join(command[2:]))
    with open(log, "w") as out:
        status = subprocess.run(
            command, env=env, stdout=out, stderr=subprocess.STDOUT
        ).returncode
    if status != 0 or not output.exists():
        row = Row("MICRO", "parser and session benchmarks", mailfast="n/a")
        row.notes.append(f"micro: pytest exited with {status}; see {log}")
        return [row]
    current = json.loads(output.read_text())["benchmarks"]
    before = {}
    if baseline is not None:
        for entry in json.loads(baseline.read_text())["benchmarks"]:
            before[entry["name"]] = entry["stats"]["median"]
    rows = []
    for entry in current:
        name, median = entry["name"], entry["stats"]["median"]
        info = entry.get("extra_info", {})
        row = Row("MICRO", _micro_label(name, info))
        if "data" in name:
            rate = info["octets"] / median / 1e6
            row.mailfast = f"{rate:,.0f} MB/s"
            if "100KiB" in name:
                row.target = f">= {PARSER_TARGET_MB_S:,.0f} MB/s"
                row.verdict = verdict(rate >= PARSER_TARGET_MB_S)
        elif "messages" in info:
            row.mailfast = f"{median * 1e6:.1f} us ({1 / median:,.0f}/s)"
        else:
            per = median / info.get("commands", 1)
            row.mailfast = f"{per * 1e9:,.0f} ns/command"
        if name in before:
            row.ratio = f"{before[name] / median:.2f}x base"
        row.postfix = "-"
        rows.append(row)
    if baseline is not None:
        rows[0].notes.append(
            f"micro: 'x base' is speed relative to {baseline.relative_to(HERE)}"
            " (above 1 is faster)"
        )
    return rows


def _micro_label(name: str, info: dict) -> str:
    name = name.removeprefix("bench_")
    if name.startswith("data["):
        size, stuffing = name[5:-1].split("-", 1)
        return f"parser DATA {size} {stuffing}"
    if name.startswith("command_line["):
        return f"parser one {name[13:-1]} command line"
    return {
        "pipelined_batch": "parser pipelined MAIL+10 RCPT+DATA",
        "transaction_in_open_session": "session+parser: one 4 KiB message",
        "session_one_message": "session+parser: connect..QUIT, one message",
    }.get(name, name)


# --- main ---------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages and runs")
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=HERE.parent,
        help="the mailfast checkout to measure (default: the one holding bench/)",
    )
    parser.add_argument(
        "--save-baseline",
        action="store_true",
        help="save this run's micro benchmarks under bench/baselines/",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory (logs, configs)",
    )
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    settings = QUICK if args.quick else FULL
    source = args.source.resolve()

    RESULTS.mkdir(exist_ok=True)
    # Idle connections need many descriptors, here and in the servers we start.
    scale.raise_file_limit(max(settings["idle"]) + 1024)
    workdir = Path(tempfile.mkdtemp(prefix="mailfast-bench-"))
    os.chmod(workdir, 0o755)  # Postfix's unprivileged daemons must reach their files
    started = datetime.datetime.now()
    about = machine()
    background = background_load()
    if background > BUSY_WARNING:
        about += f"; WARNING: CPUs {background:.0%} busy before the start"
    progress(f"mailfast benchmark, {about}; source {source}; work in {workdir}")

    missing = require_tools("smtp-source", "smtp-sink", "postfix")
    rows: list[Row] = []
    plan = settings["plan"]
    steps = {
        "micro": lambda: micro(source, settings, args.save_baseline, workdir),
        "local": lambda: e2e.local(workdir / "local", source, plan, progress),
        "relay": lambda: e2e.relay(workdir / "relay", source, plan, progress),
        "scale": lambda: (
            scale.idle_connections(
                workdir / "scale", source, settings["idle"], progress
            )
            + scale.queued(
                workdir / "scale", source, settings["queued"], plan, progress
            )
        ),
    }
    try:
        for name in SCENARIOS:
            if name not in chosen:
                continue
            if name != "micro" and missing:
                rows.append(
                    Row(
                        name.upper(),
                        name,
                        mailfast="n/a",
                        notes=[
                            f"{name}: n/a, missing {', '.join(missing)}"
                            " (make system-deps installs them)"
                        ],
                    )  # fmt: skip
                )
                continue
            progress(f"== {name}")
            began = time.monotonic()
            try:
                rows.extend(steps[name]())
            except Exception as exc:  # a broken scenario must not hide the others
                traceback.print_exc(file=sys.stderr)
                rows.append(
                    Row(
                        name.upper(),
                        name,
                        mailfast="n/a",
                        notes=[f"{name}: n/a ({type(exc).__name__}: {exc})"],
                    )  # fmt: skip
                )
            progress(f"== {name} took {time.monotonic() - began:.0f} s")
    finally:
        if args.keep:
            progress(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    elapsed = datetime.datetime.now() - started
    print(
        f"mailfast benchmark {started:%Y-%m-%d %H:%M}, "
        f"{'quick' if args.quick else 'full'} run in {elapsed.seconds // 60} min "
        f"{elapsed.seconds % 60} s\n{about}\n"
    )
    print(render(rows))
    notes = [note for row in rows for note in row.notes]
    if notes:
        print("\nnotes:")
        for note in notes:
            print(f"  - {note}")
    stamp = started.strftime("%Y%m%dT%H%M%S")
    (RESULTS / f"{stamp}.json").write_text(
        json.dumps(
            {
                "started": started.isoformat(timespec="seconds"),
                "quick": args.quick,
                "machine": about,
                "source": str(source),
                "rows": [row.to_dict() for row in rows],
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
