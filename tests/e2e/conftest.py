"""Fixtures that run a real mailfast master on a free loopback port."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .server import MailfastServer


@pytest.fixture
def start_mailfast(tmp_path: Path) -> Iterator[Callable[..., MailfastServer]]:
    """Start mailfast with configuration overrides; it is drained at teardown.

    ``start_mailfast(limits={"max_recipients": 3})`` merges into the defaults
    of ``server.default_settings``; ``workers=`` sets ``--workers``;
    ``ready=False`` returns as soon as the master is spawned.
    """
    servers: list[MailfastServer] = []

    def start(ready: bool = True, **overrides) -> MailfastServer:
        workdir = tmp_path if not servers else tmp_path / f"server{len(servers)}"
        workdir.mkdir(exist_ok=True)
        server = MailfastServer(workdir, **overrides)
        servers.append(server)
        server.start(ready=ready)
        return server

    yield start

    for server in servers:
        server.stop()
        # Shown by pytest only when the test failed: the server's side of it.
        print(f"--- {server.log_path} ---\n{server.log()[-20000:]}")


@pytest.fixture
def mailfast(start_mailfast: Callable[..., MailfastServer]) -> MailfastServer:
    """mailfast with the default test configuration and two workers."""
    return start_mailfast()
