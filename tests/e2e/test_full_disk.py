"""A full disk under a real mailfast: refused with 452, nothing half-written.

The Maildirs and the spool live on a tmpfs of 1 MiB mounted for the test,
filled with ballast until little is left. Mounting needs root (CI runs as
root); elsewhere the test is skipped.
"""

from __future__ import annotations

import os
import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .server import MailfastServer

pytestmark = pytest.mark.e2e

TMPFS_SIZE = "1m"
LEFT_FREE = 160 * 1024  # room for small messages, not for a large one
LARGE = 400 * 1024  # spills to the spool (memory buffer: 64 KiB), then fails
MEDIUM = 100 * 1024  # fits in the spool, but not twice
SENDER = "sender@example.org"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "full"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", mount_point],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", mount_point], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Write ballast until about ``leave`` octets are free; return its path."""
    ballast = disk / "ballast"
    status = os.statvfs(disk)
    size = max(0, status.f_bavail * status.f_frsize - leave)
    with open(ballast, "wb") as f:
        f.write(b"\0" * size)
    return ballast


def message(subject: str, size: int) -> bytes:
    line = b"x" * 76 + b"\r\n"
    body = line * (size // len(line) + 1)
    return f"Subject: {subject}\r\n\r\n".encode() + body


def files(directory: Path) -> list[Path]:
    return sorted(directory.iterdir()) if directory.is_dir() else []


def test_full_disk_gets_452_and_the_server_goes_on(
    start_mailfast, small_disk: Path
) -> None:
    server: MailfastServer = start_mailfast(
        server={"spool_dir": str(small_disk / "spool")},
        maildir={"root": str(small_disk / "mail")},
        limits={"memory_buffer_octets": 64 * 1024},
    )
    alice = small_disk / "mail" / "localhost" / "alice"
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        client.sendmail(SENDER, ["alice@localhost"], message("before", 1024))
    assert len(files(alice / "new")) == 1
    ballast = fill(small_disk, LEFT_FREE)

    # Too large for what is left: refused after the dot, and the session goes on.
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail(SENDER, ["alice@localhost"], message("large", LARGE))
        assert refused.value.smtp_code == 452
        assert refused.value.smtp_error.startswith(b"4.3.1")
        assert client.noop()[0] == 250
        # Room for the spool file but not for the Maildir copy beside it: the
        # commit itself fails, and the copy in tmp/ is removed.
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail(SENDER, ["alice@localhost"], message("medium", MEDIUM))
        assert refused.value.smtp_code == 452
        # A message that fits is still taken, in the same session.
        client.sendmail(SENDER, ["alice@localhost"], message("small", 1024))

    assert len(files(alice / "new")) == 2
    assert files(alice / "tmp") == []
    assert "result=tempfail" in server.log()

    # Once there is room again, the large message goes through.
    ballast.unlink()
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        client.sendmail(SENDER, ["alice@localhost"], message("large", LARGE))
    assert len(files(alice / "new")) == 3
    assert files(alice / "tmp") == []
