"""A real mailfast master process, started the way an operator starts it.

The handle writes a configuration file, runs ``mailfast --config FILE
--workers N`` in its own directory (so ``var/mail`` and ``var/spool`` land
there), waits for a 220 greeting and for every worker to report that it
started, and on stop drains it with SIGTERM. The master runs in a session of
its own so that, should it die without reaping its workers, ``stop`` can
still end every process it forked by group id.
"""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .wire import SmtpWire

READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 20.0
HOSTNAME = "mx.test"
MAX_MESSAGE_OCTETS = 1_048_576
MAILBOXES = ("alice", "bob")
ALIASES = {"postmaster": "alice", "team": ["alice", "bob"]}


def mailfast_command() -> list[str]:
    """The installed console script beside the interpreter running the tests."""
    script = Path(sys.executable).with_name("mailfast")
    if script.exists():
        return [str(script)]
    # An interpreter outside the venv (say, an IDE's) still finds the package.
    return [sys.executable, "-m", "mailfast"]


def free_port() -> int:
    """A loopback port nobody listens on right now (never the developer's 2525)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def default_settings(port: int) -> dict:
    """The configuration every end-to-end test starts from, as TOML tables."""
    return {
        "server": {
            "hostname": HOSTNAME,
            "listen": [f"127.0.0.1:{port}"],
            "workers": 2,
            "shutdown_grace_s": 10.0,
            "log_level": "info",
            "spool_dir": "var/spool",
        },
        "limits": {"max_message_octets": MAX_MESSAGE_OCTETS},
        "maildir": {"root": "var/mail"},
        "domains": {
            "localhost": {
                "mailboxes": list(MAILBOXES),
                "aliases": copy.deepcopy(ALIASES),
                "catch_all": "",
            }
        },
    }


def render_toml(settings: dict) -> str:
    """Top-level keys become tables; a nested dict of dicts becomes a sub-table."""
    lines: list[str] = []
    for name, table in settings.items():
        _render_table(lines, name, table)
    return "\n".join(lines) + "\n"


def _render_table(lines: list[str], header: str, table: dict) -> None:
    lines.append(f"[{header}]")
    subtables = {}
    for key, value in table.items():
        if isinstance(value, dict) and any(isinstance(v, dict) for v in value.values()):
            subtables[key] = value
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    lines.append("")
    for key, value in subtables.items():
        _render_table(lines, f"{header}.{_toml_key(key)}", value)


def _toml_key(key: str) -> str:
    if key.replace("_", "").replace("-", "").isalnum():
        return key
    return _toml_value(key)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        pairs = ", ".join(
            f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()
        )
        return "{ " + pairs + " }" if pairs else "{}"
    raise TypeError(f"no TOML spelling for {value!r}")


class MailfastServer:
    """One master and its workers, listening on a free loopback port."""

    def __init__(self, workdir: Path, *, workers: int = 2, **overrides: dict) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.workdir = workdir
        self.workers = workers
        self.config_path = workdir / "mailfast.toml"
        self.log_path = workdir / "mailfast.log"
        self.settings = default_settings(self.port)
        self.configure(**overrides)
        self.proc: subprocess.Popen | None = None

    # --- configuration -------------------------------------------------------

    def configure(self, **overrides: dict) -> None:
        """Merge ``overrides`` section by section and rewrite the file.

        ``domains`` replaces the whole domain table, so a test states every
        domain it wants rather than inheriting ones it does not see.
        """
        for section, values in overrides.items():
            if section == "domains":
                self.settings["domains"] = copy.deepcopy(values)
            else:
                self.settings.setdefault(section, {}).update(values)
        self.config_path.write_text(render_toml(self.settings), encoding="utf-8")

    # --- process lifecycle ---------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.proc is not None, "mailfast was not started"
        return self.proc.pid

    def start(self, ready: bool = True) -> None:
        """Spawn the master; with ``ready``, return only once it serves."""
        command = [
            *mailfast_command(),
            "--config",
            str(self.config_path),
            "--workers",
            str(self.workers),
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        if ready:
            self.wait_ready()

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Return once a worker greets with 220 and every worker says it started.

        A 220 proves only one worker; the others may still be setting up, and
        a test that signals them then would test start-up, not what it means to.
        """
        deadline = time.monotonic() + timeout_s
        while not (self._greets() and self._all_workers_started()):
            if self.proc.poll() is not None:
                pytest.fail(
                    f"mailfast exited with status {self.proc.returncode} before "
                    f"serving; its log:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"no 220 greeting and {self.workers} started workers within "
                    f"{timeout_s} s (children: {self.worker_pids()}); "
                    f"log:\n{self.log()}"
                )
            time.sleep(0.05)

    def _all_workers_started(self) -> bool:
        pids = self.worker_pids()
        log = self.log()
        return len(pids) >= self.workers and all(
            f"worker {pid} started" in log for pid in pids
        )

    def _greets(self) -> bool:
        try:
            with SmtpWire(self.host, self.port, timeout=2.0) as wire:
                if wire.reply().code != 220:
                    return False
                wire.command("QUIT")
                return True
        except (OSError, EOFError):
            return False

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout_s: float) -> int:
        """The master's exit status; raises TimeoutExpired if it lives on."""
        return self.proc.wait(timeout=timeout_s)

    def kill(self) -> None:
        """SIGKILL the master and everything it forked, at once."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def stop(self) -> None:
        """Drain with SIGTERM, kill after STOP_TIMEOUT_S, then end any orphan."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # Workers forked by a reload may still be starting; a stop signal
            # that reaches one before its handler is set is a start-up race
            # with a test of its own, not something every teardown should hit.
            deadline = time.monotonic() + 5
            while not self._all_workers_started() and time.monotonic() < deadline:
                time.sleep(0.05)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # The session id is the master's pid; workers it left behind (if it
        # died first) still carry it as their process group.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    # --- observation ---------------------------------------------------------

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def worker_pids(self) -> set[int]:
        """Live (non-zombie) children of the master, read from /proc."""
        children = set()
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:  # the process ended while we looked
                continue
            # The command name may hold spaces and parentheses: fields after
            # the last ")" are state, ppid, ...
            state, ppid = stat[stat.rindex(b")") + 2 :].split()[:2]
            if int(ppid) == self.pid and state != b"Z":
                children.add(int(entry.name))
        return children

    def maildir(self, mailbox: str, domain: str = "localhost") -> Path:
        return self.workdir / "var" / "mail" / domain / mailbox

    def delivered(self, mailbox: str, domain: str = "localhost") -> list[Path]:
        """Files in the mailbox's ``new/``, oldest name first."""
        return _files(self.maildir(mailbox, domain) / "new")

    def unfinished(self, mailbox: str, domain: str = "localhost") -> list[Path]:
        """Files left in the mailbox's ``tmp/``."""
        return _files(self.maildir(mailbox, domain) / "tmp")

    def all_delivered(self) -> list[Path]:
        """Every file under any ``new/`` or ``cur/`` of any mailbox."""
        root = self.workdir / "var" / "mail"
        return sorted(p for sub in ("new", "cur") for p in root.glob(f"*/*/{sub}/*"))


def _files(directory: Path) -> list[Path]:
    try:
        return sorted(p for p in directory.iterdir() if p.is_file())
    except FileNotFoundError:
        return []
