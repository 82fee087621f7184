"""The DNS answers that every worker process of one machine shares.

Theory of operation
-------------------
Each worker resolves mail exchangers on its own event loop, but a lookup made
by one worker should serve all the others until its TTL runs out: twenty
workers relaying to one new domain should ask the name server once, not
twenty times. The shared store is an SQLite file in WAL mode: readers never
wait for the writer, a write is a single-row upsert, and no server process
has to be supervised.

Rows are keyed by (name, rdtype) and carry an absolute expiry time on the
wall clock, because monotonic clocks are not comparable between processes.
A clock that steps backwards could make a row outlive its TTL, so a row that
claims to live longer than ``max_ttl_s`` from now is treated as expired.

Invariants:

- A connection is never used by a process other than the one that opened
  it (sharedsqlite.py, which the failed-login counts use too).
- The cache can only save work, never cause a failure: any SQLite error is
  counted in ``errors`` and turns into a miss (``get``) or a no-op (``put``);
  so does an unusable directory.

Durability is not wanted: ``synchronous=OFF`` skips every fsync, and a crash
that loses recent rows only costs a few repeated queries.

Each call runs directly on the caller's event loop. Measured on a warm file
(100,000 calls, ext4, 1,000 rows): a hit costs 6-7 µs, a miss 4 µs, a put
13 µs, nothing being synced; with eight processes each alternating puts and
gets flat out, 50-65 µs per call and no busy timeouts. Handing such a call to
an executor thread would cost more than the call itself.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from .sharedsqlite import SharedSQLite

# A server failure (or silence) is kept briefly so that a queue run holding
# many messages for one broken domain, spread over every worker, asks once
# per few seconds instead of once per message; RFC 2308 §7 allows caching
# such failures for up to five minutes, but a short hold lets mail flow
# again soon after the remote side is fixed.
SERVFAIL_TTL_S = 5

# Expired rows are only overwritten when their name is looked up again, so
# every so many puts the rows that expired are deleted in one statement.
PURGE_EVERY_PUTS = 1000

STATUSES = frozenset({"ok", "nxdomain", "nodata", "servfail"})
NEGATIVE_STATUSES = frozenset({"nxdomain", "nodata"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    name TEXT NOT NULL,
    rdtype TEXT NOT NULL,
    expires REAL NOT NULL,
    status TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (name, rdtype)
) WITHOUT ROWID
"""


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """One DNS answer as the resolver needs it, without the wire details.

    ``data`` holds ``(preference, exchange)`` pairs for MX and address
    strings for A and AAAA; it is empty unless ``status`` is "ok".
    """

    status: str  # "ok", "nxdomain", "nodata" or "servfail"
    data: list


class MXCache:
    """A TTL-bounded cache of DNS answers in an SQLite file shared by processes.

    ``put`` clamps TTLs: positive answers and negative answers (RFC 2308) to
    ``[min_ttl_s, max_ttl_s]``, a negative answer without a TTL (no SOA came
    with it) to ``negative_ttl_s``, server failures to ``SERVFAIL_TTL_S``.
    ``clock`` returns wall-clock seconds and exists so tests can move time.
    """

    def __init__(
        self,
        path: str,
        min_ttl_s: int = 60,
        max_ttl_s: int = 86400,
        negative_ttl_s: int = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.min_ttl_s = min_ttl_s
        self.max_ttl_s = max_ttl_s
        self.negative_ttl_s = negative_ttl_s
        self.clock = clock
        self.errors = 0  # SQLite errors seen by this process
        self._file = SharedSQLite(path, (_SCHEMA,))
        self._puts = 0

    def get(self, name: str, rdtype: str) -> CachedAnswer | None:
        """The live answer for ``name`` (lower case, no final dot), or None."""
        try:
            row = (
                self._file.connection()
                .execute(
                    "SELECT expires, status, data FROM answers"
                    " WHERE name = ? AND rdtype = ?",
                    (name, rdtype),
                )
                .fetchone()
            )
        except (sqlite3.Error, OSError):
            self.errors += 1
            return None
        if row is None:
            return None
        expires, status, data = row
        now = self.clock()
        if expires <= now or expires > now + self.max_ttl_s:
            return None
        return CachedAnswer(status, _decode(rdtype, data))

    def put(
        self, name: str, rdtype: str, answer: CachedAnswer, ttl: int | None
    ) -> None:
        """Store ``answer``; ``ttl`` is None for a negative answer without SOA."""
        if answer.status not in STATUSES:
            raise ValueError(f"unknown answer status {answer.status!r}")
        now = self.clock()
        expires = now + self._clamp(answer.status, ttl)
        try:
            connection = self._file.connection()
            connection.execute(
                "INSERT OR REPLACE INTO answers (name, rdtype, expires, status, data)"
                " VALUES (?, ?, ?, ?, ?)",
                (name, rdtype, expires, answer.status, json.dumps(answer.data)),
            )
            self._puts += 1
            if self._puts % PURGE_EVERY_PUTS == 0:
                connection.execute("DELETE FROM answers WHERE expires <= ?", (now,))
        except (sqlite3.Error, OSError):
            self.errors += 1

    def close(self) -> None:
        """Close this process's connection; a later call reopens it."""
        self._file.close()

    def _clamp(self, status: str, ttl: int | None) -> float:
        if status == "servfail":
            return SERVFAIL_TTL_S
        if ttl is None:
            ttl = self.negative_ttl_s if status in NEGATIVE_STATUSES else 0
        return min(max(ttl, self.min_ttl_s), self.max_ttl_s)


def _decode(rdtype: str, data: str) -> list:
    items = json.loads(data)
    if rdtype == "MX":
        # JSON has no tuples; give back what the resolver put in.
        return [(preference, exchange) for preference, exchange in items]
    return items
