"""Failed logins counted for the whole machine, in a file every worker opens."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from mailfast.loginfailures import LoginFailures


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def counter(path: Path, clock: Clock, max_failures: int = 3) -> LoginFailures:
    return LoginFailures(str(path), max_failures, window_s=300.0, clock=clock)


def test_blocked_after_max_failures_within_the_window(
    tmp_path: Path, clock: Clock
) -> None:
    failures = counter(tmp_path / "f.sqlite", clock)
    for _ in range(2):
        failures.record("192.0.2.1")
        assert not failures.blocked("192.0.2.1")
    failures.record("192.0.2.1")
    assert failures.blocked("192.0.2.1")
    assert not failures.blocked("192.0.2.2")
    clock.now += 301
    assert not failures.blocked("192.0.2.1")


def test_two_processes_count_together(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "f.sqlite"
    first, second = counter(path, clock), counter(path, clock)
    first.record("192.0.2.1")
    second.record("192.0.2.1")
    assert not first.blocked("192.0.2.1")
    pid = os.fork()
    if pid == 0:  # a worker forked after the master had the file open
        try:
            first.record("192.0.2.1")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert first.blocked("192.0.2.1") and second.blocked("192.0.2.1")


def test_an_ipv6_client_counts_by_its_64(tmp_path: Path, clock: Clock) -> None:
    failures = counter(tmp_path / "f.sqlite", clock, max_failures=2)
    failures.record("2001:db8:1:2::1")
    failures.record("2001:db8:1:2:ffff::9")
    assert failures.blocked("2001:db8:1:2::77")
    assert not failures.blocked("2001:db8:1:3::1")
    failures.record("::ffff:192.0.2.9")
    failures.record("192.0.2.9")
    assert failures.blocked("192.0.2.9")


def test_an_unusable_file_falls_back_to_this_process_for_a_while(
    tmp_path: Path, clock: Clock, caplog
) -> None:
    (tmp_path / "file").write_text("not a directory")
    path = tmp_path / "file" / "f.sqlite"
    failures = counter(path, clock, max_failures=2)
    failures.record("192.0.2.1")
    failures.record("192.0.2.1")
    assert failures.blocked("192.0.2.1")
    assert "counts failed logins alone" in caplog.text
    # Fixed, and a minute later the file is shared again.
    (tmp_path / "file").unlink()
    clock.now += 61
    failures.record("192.0.2.9")
    failures.record("192.0.2.9")
    assert counter(path, clock, max_failures=2).blocked("192.0.2.9")


def test_old_rows_are_purged(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "f.sqlite"
    failures = counter(path, clock, max_failures=1_000)
    for i in range(150):
        failures.record(f"192.0.2.{i % 200}")
    clock.now += 400
    for i in range(100):
        failures.record("198.51.100.1")
    (rows,) = sqlite3.connect(path).execute("SELECT count(*) FROM failures").fetchone()
    assert rows < 150
