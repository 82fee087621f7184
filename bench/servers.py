"""The servers the benchmark starts: mailfast, a private Postfix, smtp-sink.

Each lives in a directory of its own under the run's temporary directory and
listens on loopback only. Every handle has ``start``, ``stop`` and ``pid``,
the root of the process tree that procstat measures.
"""

from __future__ import annotations

import functools
import grp
import os
import pty
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from procstat import process_tree

READY_TIMEOUT_S = 20.0

# Log lines that this set-up causes and that say nothing about the load.
# The harness runs as root (Postfix needs it) without dropping privileges.
MAILFAST_EXPECTED = ("running as root with no server.user",)
# Virtual machines' clocks: cleanup(8) sees file times a second ahead.
POSTFIX_EXPECTED = ("file system clock is", "resetting file time stamps")
STOP_TIMEOUT_S = 30.0

LOCAL_DOMAIN = "local.test"
REMOTE_DOMAIN = "remote.test"
MAILBOX = "alice"


class ServerError(Exception):
    """A server would not start, or misbehaved in a way that voids a figure."""


def free_port() -> int:
    """A loopback port that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def greets(port: int, timeout_s: float = 2.0) -> bool:
    """Whether something on 127.0.0.1:``port`` answers with a 220 banner."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            banner = sock.recv(512)
            if banner.startswith(b"220"):
                sock.sendall(b"QUIT\r\n")
                return True
    except OSError:
        pass
    return False


def wait_greeting(
    port: int, alive, what: str, timeout_s: float = READY_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while not greets(port):
        if not alive():
            raise ServerError(f"{what} exited before serving")
        if time.monotonic() > deadline:
            raise ServerError(f"{what}: no 220 greeting within {timeout_s:.0f} s")
        time.sleep(0.05)


def count_files(directory: Path) -> int:
    try:
        return len(os.listdir(directory))
    except FileNotFoundError:
        return 0


def empty_directory(directory: Path) -> None:
    """Start ``directory`` (a Maildir ``new/``) afresh, without deleting a file.

    The files move, directory and all, to a sibling that is removed with
    the rest of the work directory at the end. Unlinking them here instead
    would make the next run pay for it: ext4 mounted with ``discard``
    trims freed blocks when the journal commits, which slowed every run
    after the first by a third, mailfast's and Postfix's alike.
    """
    try:
        if not any(os.scandir(directory)):
            return
    except FileNotFoundError:
        return
    done = 0
    while (directory.parent / f"{directory.name}.done{done}").exists():
        done += 1
    os.rename(directory, directory.parent / f"{directory.name}.done{done}")
    os.mkdir(directory, 0o700)
    shutil.chown(directory, *_owner(directory.parent))


def _owner(path: Path) -> tuple[int, int]:
    status = os.stat(path)
    return status.st_uid, status.st_gid


def _children(pid: int) -> list[int]:
    return process_tree(pid)[1:]


def _kill_tree(root: int) -> None:
    """SIGKILL whatever is left of a tree, leaves first; only pids under ``root``."""
    for pid in reversed([root, *_children(root)]):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --- mailfast -----------------------------------------------------------------


# The harness writes mailfast's configuration itself rather than through
# mailfast.config: with --source it drives another checkout, whose writer
# may differ or be missing.
def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    raise TypeError(f"no TOML spelling for {value!r}")


# The idle-connection test opens more than the default server-wide cap of
# 10,000. Limits per client address need no change: loopback, where all the
# load comes from, is exempt from them by default, as Postfix exempts
# $mynetworks.
UNLIMITED_CONNECTIONS = {"max_connections": 0}


@functools.cache
def known_settings(source: Path) -> frozenset[tuple[str, str]]:
    """(section, key) pairs the mailfast in ``source`` knows, from check-config.

    The benchmark may measure an older tree (``--source``), which would
    refuse a key it does not know.
    """
    env = dict(os.environ, PYTHONPATH=str(source))
    output = subprocess.run(
        [sys.executable, "-m", "mailfast", "check-config"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
    ).stdout
    known = set()
    section = ""
    for line in output.splitlines():
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif " = " in line:
            known.add((section, line.split(" = ", 1)[0]))
    return frozenset(known)


class Mailfast:
    """``mailfast --config FILE --workers N`` started from ``workdir``.

    ``sections`` adds or overrides configuration tables, e.g.
    ``{"relay": {"port": 2600}}``; keys that this tree of mailfast does not
    know are left out (see ``omitted``). The log level is "warning", so
    anything in the log is worth reading.
    """

    def __init__(
        self,
        workdir: Path,
        source: Path,
        workers: int,
        sections: dict[str, dict] | None = None,
    ):
        self.workdir = workdir
        self.source = source
        self.workers = workers
        self.port = free_port()
        self.config_path = workdir / "mailfast.toml"
        self.log_path = workdir / "mailfast.log"
        self.maildir_new = workdir / "var/mail" / LOCAL_DOMAIN / MAILBOX / "new"
        self.queue_dir = workdir / "var/queue"
        self.proc: subprocess.Popen | None = None
        tables = {
            "server": {
                "hostname": "mailfast.bench.test",
                "listen": [f"127.0.0.1:{self.port}"],
                "log_level": "warning",
            },
            "limits": dict(UNLIMITED_CONNECTIONS),
        }
        for name, values in (sections or {}).items():
            tables.setdefault(name, {}).update(values)
        known = known_settings(source) or {
            (name, key) for name, values in tables.items() for key in values
        }  # check-config failed: write everything and let mailfast say what is wrong
        self.omitted = [
            f"{name}.{key}"
            for name, values in tables.items()
            for key in values
            if (name, key) not in known
        ]
        lines = []
        for name, values in tables.items():
            lines.append(f"[{name}]")
            lines.extend(
                f"{key} = {_toml(value)}"
                for key, value in values.items()
                if (name, key) in known
            )
            lines.append("")
        lines.append(f'[domains."{LOCAL_DOMAIN}"]')
        lines.append(f"mailboxes = {_toml([MAILBOX])}")
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text("\n".join(lines) + "\n")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def environment(self) -> dict[str, str]:
        """Run the tree under test, whichever checkout this benchmark came from."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(self.source), *filter(None, [env.get("PYTHONPATH")])]
        )
        return env

    def start(self) -> None:
        command = [
            sys.executable,
            "-m",
            "mailfast",
            "--config",
            str(self.config_path),
            "--workers",
            str(self.workers),
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        wait_greeting(self.port, lambda: self.proc.poll() is None, "mailfast")
        deadline = time.monotonic() + READY_TIMEOUT_S
        while len(self.worker_pids()) < self.workers:
            if time.monotonic() > deadline:
                raise ServerError(f"mailfast: {self.workers} workers did not start")
            time.sleep(0.05)

    def worker_pids(self) -> list[int]:
        return _children(self.pid)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _kill_tree(self.pid)
                self.proc.wait()
        # Workers orphaned by a master that died first keep its process group.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc = None

    def log_problems(self) -> list[str]:
        """Lines of the log at WARNING or above (the only ones it writes)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [
            line
            for line in text.splitlines()
            if line.strip() and not any(known in line for known in MAILFAST_EXPECTED)
        ]


# --- Postfix ------------------------------------------------------------------

# Only the services this benchmark exercises, none chrooted, so that the
# instance needs nothing outside its own directory. Columns: service, type,
# private, unprivileged, chroot, wakeup, process limit, command.
_MASTER_SERVICES = """\
{listen} inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
proxywrite unix - - n - 1 proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
local unix - n n - - local
virtual unix - n n - - virtual
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""


class Postfix:
    """A Postfix instance of its own: configuration, queue and mailboxes in ``base``.

    Mail for LOCAL_DOMAIN is delivered by virtual(8) into a Maildir under
    ``base/vmail``; mail for REMOTE_DOMAIN goes by smtp(8) to
    ``[127.0.0.1]:relay_port`` (an smtp-sink). Everything else keeps
    Postfix's defaults, fsync included, except what would reach the network:
    no DNS for the relay, no reverse lookup of clients.
    """

    def __init__(self, base: Path, relay_port: int):
        self.base = base
        self.port = free_port()
        self.relay_port = relay_port
        self.config_dir = base / "etc"
        self.queue_dir = base / "spool"
        self.data_dir = base / "data"
        self.mail_base = base / "vmail"
        self.log_path = base / "maillog"
        self.maildir_new = self.mail_base / LOCAL_DOMAIN / MAILBOX / "new"
        self._pid = 0

    @property
    def pid(self) -> int:
        return self._pid

    def configure(self) -> None:
        owner = pwd.getpwnam("postfix")
        postdrop = grp.getgrnam("postdrop")
        for directory in (self.base, self.config_dir, self.queue_dir):
            directory.mkdir(parents=True, exist_ok=True)
            os.chmod(directory, 0o755)
        for directory in (self.data_dir, self.mail_base):
            directory.mkdir(parents=True, exist_ok=True)
            os.chown(directory, owner.pw_uid, owner.pw_gid)
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": self.queue_dir,
            "data_directory": self.data_dir,
            "mail_owner": owner.pw_name,
            "setgid_group": postdrop.gr_name,
            "myhostname": "postfix.bench.test",
            "mydomain": "bench.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "relay_domains": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "alias_maps": "",
            "alias_database": "",
            "virtual_mailbox_domains": LOCAL_DOMAIN,
            "virtual_mailbox_base": self.mail_base,
            "virtual_mailbox_maps": f"texthash:{self.config_dir / 'vmailbox'}",
            "virtual_uid_maps": f"static:{owner.pw_uid}",
            "virtual_gid_maps": f"static:{owner.pw_gid}",
            "transport_maps": f"texthash:{self.config_dir / 'transport'}",
            # Loopback only: nothing below may reach out of the machine.
            "smtp_dns_support_level": "disabled",
            "smtpd_peername_lookup": "no",
            "maillog_file": self.log_path,
            "maillog_file_prefixes": self.base,
        }
        (self.config_dir / "main.cf").write_text(
            "".join(f"{key} = {value}\n" for key, value in settings.items())
        )
        (self.config_dir / "master.cf").write_text(
            _MASTER_SERVICES.format(listen=f"127.0.0.1:{self.port}")
        )
        (self.config_dir / "vmailbox").write_text(
            f"{MAILBOX}@{LOCAL_DOMAIN} {LOCAL_DOMAIN}/{MAILBOX}/\n"
        )
        (self.config_dir / "transport").write_text(
            f"{REMOTE_DOMAIN} smtp:[127.0.0.1]:{self.relay_port}\n"
        )

    def _postfix(self, *arguments: str) -> tuple[int, str]:
        """Run postfix(1); its exit status and what it said.

        Before postlogd runs, postfix(1) reports only to syslog, and to its
        standard error only when that is a terminal: give it one.
        """
        controller, terminal = pty.openpty()
        try:
            proc = subprocess.Popen(
                ["postfix", "-c", str(self.config_dir), *arguments],
                stdin=subprocess.DEVNULL,
                stdout=terminal,
                stderr=terminal,
            )
            os.close(terminal)
            terminal = -1
            said = bytearray()
            while True:
                try:
                    chunk = os.read(controller, 4096)
                except OSError:  # EIO: the terminal's last writer has gone
                    break
                if not chunk:
                    break
                said += chunk
            status = proc.wait(timeout=60)
        finally:
            os.close(controller)
            if terminal >= 0:
                os.close(terminal)
        return status, said.decode(errors="replace").strip()

    def version(self) -> str:
        result = subprocess.run(
            ["postconf", "-c", str(self.config_dir), "-h", "mail_version"],
            capture_output=True,
            text=True,
        )
        return result.stdout.strip()

    def start(self) -> None:
        self.configure()
        status, said = self._postfix("start")
        if status != 0:
            raise ServerError(f"postfix start failed: {said}")
        pid_file = self.queue_dir / "pid/master.pid"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                self._pid = int(pid_file.read_text().split()[0])
                break
            except (FileNotFoundError, IndexError, ValueError):
                if time.monotonic() > deadline:
                    raise ServerError("postfix: no master.pid") from None
                time.sleep(0.05)
        wait_greeting(self.port, lambda: _alive(self._pid), "postfix master")

    def stop(self) -> None:
        if not self._pid:
            return
        self._postfix("stop")
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _alive(self._pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(self._pid):
            _kill_tree(self._pid)
        self._pid = 0

    def queue_size(self) -> int:
        """Messages in the incoming, active and deferred queues."""
        total = 0
        for name in ("incoming", "active", "deferred", "maildrop"):
            for _root, _dirs, files in os.walk(self.queue_dir / name):
                total += len(files)
        return total

    def log_problems(self) -> list[str]:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        pattern = re.compile(r"\b(warning|error|fatal|panic):")
        return [
            line
            for line in text.splitlines()
            if pattern.search(line) and not any(k in line for k in POSTFIX_EXPECTED)
        ]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] != b"Z"


# --- smtp-sink ----------------------------------------------------------------

_COUNTER = re.compile(rb"mesg=(\d+)")


class SmtpSink:
    """Postfix's smtp-sink on a loopback port, counting the messages it takes.

    ``-c`` makes it print running counters (``sess=.. quit=.. mesg=..``,
    each ended by a CR) whenever a message or a session ends; ``received``
    reads the last one from the end of its output file.
    """

    BACKLOG = 1024
    MAX_CONNECTIONS = 1024

    def __init__(self, base: Path):
        self.base = base
        self.port = free_port()
        self.output_path = base / "sink.out"
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        command = ["smtp-sink", "-c", "-m", str(self.MAX_CONNECTIONS)]
        if os.geteuid() == 0:
            command += ["-u", "postfix"]  # it refuses to run as root
        command += [f"127.0.0.1:{self.port}", str(self.BACKLOG)]
        with open(self.output_path, "wb") as out:
            self.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        wait_greeting(self.port, lambda: self.proc.poll() is None, "smtp-sink")

    def received(self) -> int:
        with open(self.output_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256))
            counters = _COUNTER.findall(f.read())
        return int(counters[-1]) if counters else 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def require_tools(*names: str) -> list[str]:
    """The names of tools that are missing from PATH and /usr/sbin."""
    return [
        name
        for name in names
        if shutil.which(name) is None
        and shutil.which(name, path="/usr/sbin:/usr/bin") is None
    ]
