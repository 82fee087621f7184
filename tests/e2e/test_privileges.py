"""Started as root with ``server.user``: workers serve as that user, never root.

The master keeps root (it binds ports and reads the TLS key on reload);
every worker switches to ``nobody`` before it serves anyone, and whatever
the workers write (Maildirs, the queue) belongs to ``nobody`` and is private
to it. The data directories live in a directory of their own under /tmp
that ``nobody`` may traverse: pytest's tmp_path is private to root.
"""

from __future__ import annotations

import os
import pwd
import shutil
import smtplib
import stat
import tempfile
import time
from pathlib import Path

import pytest

from .securityfixtures import small_message
from .server import free_port

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root"),
]

USER = "nobody"
WAIT_S = 10.0


@pytest.fixture(name="data_root")
def fixture_data_root():
    """A directory under /tmp that ``nobody`` can pass through but not list."""
    path = Path(tempfile.mkdtemp(prefix="mailfast-privileges-", dir="/tmp"))
    try:
        path.chmod(0o711)
        yield path
    finally:
        shutil.rmtree(path)


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def ids(field: str) -> set[int]:
    """The real, effective, saved and file-system ids of a Uid or Gid line."""
    return {int(value) for value in field.split()}


def owner_and_mode(path: Path) -> tuple[str, int]:
    info = path.stat()
    return pwd.getpwuid(info.st_uid).pw_name, stat.S_IMODE(info.st_mode)


# data_root comes first: fixtures are torn down in the reverse order, so the
# server is stopped before its directories are removed (a master still
# running would make them again).
def test_workers_run_as_the_configured_user(data_root: Path, start_mailfast) -> None:
    account = pwd.getpwnam(USER)
    server = start_mailfast(
        server={"user": USER, "spool_dir": str(data_root / "spool")},
        maildir={"root": str(data_root / "mail")},
        queue={"directory": str(data_root / "queue"), "min_backoff_s": 60.0},
        relay={
            "mx_cache_path": str(data_root / "cache" / "mx.sqlite"),
            # The relayed message below must stay on loopback, and defer.
            "nameservers": [f"127.0.0.1:{free_port()}"],
            "dns_timeout_s": 1.0,
        },
    )

    # The master is root; each worker is nobody through and through.
    assert ids(proc_status(server.pid)["Uid"]) == {0}
    workers = server.worker_pids()
    assert len(workers) == 2, workers
    for pid in workers:
        status = proc_status(pid)
        assert ids(status["Uid"]) == {account.pw_uid}, (pid, status["Uid"])
        assert ids(status["Gid"]) == {account.pw_gid}, (pid, status["Gid"])
        assert status["Groups"].split() == [], (pid, status["Groups"])
        assert int(status["CapEff"], 16) == 0, (pid, status["CapEff"])

    # A local delivery and a relayed message, which waits in the queue.
    message = small_message("written by nobody", sender="sender@example.org")
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        assert client.sendmail("sender@example.org", ["alice@localhost"], message) == {}
        assert client.sendmail("alice@localhost", ["bob@remote.test"], message) == {}

    mailbox = data_root / "mail" / "localhost" / "alice"
    [delivered] = list((mailbox / "new").iterdir())
    assert owner_and_mode(delivered) == (USER, 0o600)
    for directory in (
        data_root / "mail",
        data_root / "mail" / "localhost",
        mailbox,
        mailbox / "tmp",
        mailbox / "new",
        mailbox / "cur",
    ):
        assert owner_and_mode(directory) == (USER, 0o700), directory

    queue = data_root / "queue"
    deferred = _wait_for_files(queue / "deferred")
    for path in [queue, *queue.rglob("*"), data_root / "spool"]:
        owner, mode = owner_and_mode(path)
        assert owner == USER, path
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
    assert deferred, "the relayed message is not in the queue"


def _wait_for_files(directory: Path) -> list[Path]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        files = sorted(p for p in directory.rglob("*") if p.is_file())
        if files:
            return files
        time.sleep(0.05)
    return []
