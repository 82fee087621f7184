"""An SQLite file that the workers of one machine share, opened once per process.

The MX cache and the failed-login counts live in such files. Both want the
same things: WAL mode, so readers never wait for the writer; no fsync,
since losing recent rows in a crash costs only repeated work; autocommit,
so no lock outlives the statement that took it; and a short busy timeout,
since every call runs on an event loop.

SQLite forbids carrying an open connection across ``fork()`` (its locks are
per process and its WAL index is memory-mapped), so the connection is
opened lazily, the opener's pid is recorded, and a process that finds
another pid there opens its own. A connection inherited that way is kept
referenced, never closed and never collected: closing it in the child
would run SQLite's shutdown on file state that is the parent's.
"""

from __future__ import annotations

import os
import sqlite3

# How long a writer may wait for another process's write. Writes hold the
# lock for microseconds (no fsync), so this is only reached when something
# is badly wrong, and it bounds how long an event loop can stall.
BUSY_TIMEOUT_S = 0.25

_inherited_connections: list[sqlite3.Connection] = []


class SharedSQLite:
    def __init__(self, path: str, schema: tuple[str, ...]) -> None:
        self.path = path
        self._schema = schema
        self._connection: sqlite3.Connection | None = None
        self._pid = 0

    def connection(self) -> sqlite3.Connection:
        """This process's connection, opened (and the schema made) on first use."""
        pid = os.getpid()
        if self._connection is not None and self._pid == pid:
            return self._connection
        if self._connection is not None:
            _inherited_connections.append(self._connection)
            self._connection = None
        parent = os.path.dirname(self.path)
        if parent:
            os.makedirs(parent, mode=0o700, exist_ok=True)
        connection = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None
        )
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=OFF")
            for statement in self._schema:
                connection.execute(statement)
        except BaseException:
            connection.close()
            raise
        self._connection, self._pid = connection, pid
        return connection

    def close(self) -> None:
        """Close this process's connection; a later call opens a new one."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._pid == os.getpid():
            connection.close()
        else:
            _inherited_connections.append(connection)
