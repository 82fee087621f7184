"""What an operator's signals do: SIGTERM drains, SIGHUP reloads."""

from __future__ import annotations

import signal
import smtplib
import socket
import subprocess
import threading
import time

import pytest

from .delivery import read_delivery
from .server import ALIASES, MailfastServer
from .wire import SmtpWire, open_session

pytestmark = pytest.mark.e2e

GRACE_S = 10.0


def refuses_connections(server: MailfastServer, timeout_s: float = 5.0) -> bool:
    """Poll until connecting to the listen address fails with ECONNREFUSED."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((server.host, server.port), timeout=1):
                pass
        except ConnectionRefusedError:
            return True
        except OSError:  # reset while the listener was closing: look again
            pass
        time.sleep(0.05)
    return False


def recipient_code(server: MailfastServer, recipient: str) -> int:
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        client.ehlo()
        client.mail("sender@example.org")
        code, _ = client.rcpt(recipient)
        client.rset()
        return code


def test_sigterm_lets_an_open_transaction_finish(start_mailfast) -> None:
    server = start_mailfast(server={"shutdown_grace_s": GRACE_S})
    message = b"Subject: drain\r\n\r\nfirst half\r\nsecond half\r\n"
    with open_session(server.host, server.port) as wire:
        assert wire.command("MAIL FROM:<sender@example.org>").code == 250
        assert wire.command("RCPT TO:<alice@localhost>").code == 250
        assert wire.command("DATA").code == 354
        wire.send(message[:20])

        server.signal(signal.SIGTERM)
        # Checked last, so that a failure here still shows how the rest went.
        refused = refuses_connections(server)
        assert server.proc.poll() is None, "master left before its session ended"

        wire.send(message[20:] + b".\r\n")
        reply = wire.reply()
        assert reply.code == 250, reply
        assert wire.command("QUIT").code == 221

    assert server.wait(GRACE_S + 5) == 0
    [path] = server.delivered("alice")
    assert read_delivery(path).message == message
    assert "Traceback" not in server.log()
    assert refused, "new connections were still accepted after SIGTERM"


def test_sigterm_with_an_idle_session_exits_0(start_mailfast) -> None:
    grace_s = 2.0
    server = start_mailfast(server={"shutdown_grace_s": grace_s})
    with open_session(server.host, server.port) as idle:
        server.signal(signal.SIGTERM)

        # An idle session has nothing to finish; at the latest when the grace
        # period ends it is told so (421) or dropped, and the master exits 0.
        assert server.wait(grace_s + 10) == 0
        rest = idle.silent_for(1.0)
        assert rest == b"<EOF>" or rest.startswith(b"421"), rest


def test_sigterm_while_workers_start_is_not_lost(start_mailfast) -> None:
    # A long grace period, so that a worker that missed the signal shows as a
    # hang rather than as a slightly slow stop.
    server = start_mailfast(ready=False, server={"shutdown_grace_s": 30.0})
    deadline = time.monotonic() + 15
    while len(server.worker_pids()) < server.workers:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.005)

    server.signal(signal.SIGTERM)

    try:
        status = server.wait(8.0)
    except subprocess.TimeoutExpired:
        server.kill()
        pytest.fail(f"an idle mailfast did not stop within 8 s:\n{server.log()}")
    assert status == 0


class ConnectProbe(threading.Thread):
    """Opens session after session; each must be served from 220 to 221."""

    def __init__(self, server: MailfastServer, limit_s: float = 60.0) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.limit_s = limit_s
        self.stopping = threading.Event()
        self.served = 0
        self.failures: list[str] = []

    def run(self) -> None:
        deadline = time.monotonic() + self.limit_s  # bounded, whatever happens
        while not self.stopping.is_set() and time.monotonic() < deadline:
            try:
                self._session()
                self.served += 1
            except (OSError, EOFError, AssertionError) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.01)

    def _session(self) -> None:
        with SmtpWire(self.server.host, self.server.port, timeout=5) as wire:
            for command, code in [
                (None, 220),
                ("EHLO probe.test", 250),
                ("MAIL FROM:<probe@example.org>", 250),
                ("RCPT TO:<alice@localhost>", 250),
                ("RSET", 250),
                ("QUIT", 221),
            ]:
                reply = wire.reply() if command is None else wire.command(command)
                assert reply.code == code, f"{command}: {reply}"

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)


def test_sighup_reloads_without_refusing_anyone(start_mailfast) -> None:
    server = start_mailfast()
    assert recipient_code(server, "carol@localhost") == 550

    probes = [ConnectProbe(server) for _ in range(3)]
    for probe in probes:
        probe.start()
    try:
        time.sleep(0.3)  # probe the steady state first
        server.configure(
            domains={
                "localhost": {
                    "mailboxes": ["alice", "bob", "carol"],
                    "aliases": ALIASES,
                    "catch_all": "",
                }
            }
        )
        server.signal(signal.SIGHUP)

        # Every worker must have the new table: ask until a run of fresh
        # connections in a row all know carol. These sessions run during the
        # reload too, so a dropped one counts against it like a probe's.
        dropped = []
        deadline = time.monotonic() + 15
        in_a_row = 0
        while in_a_row < 10:
            assert time.monotonic() < deadline, server.log()
            try:
                known = recipient_code(server, "carol@localhost") == 250
            except (OSError, smtplib.SMTPException) as exc:
                dropped.append(f"{type(exc).__name__}: {exc}")
                known = False
            in_a_row = in_a_row + 1 if known else 0
        time.sleep(0.5)  # and keep probing once it has settled
    finally:
        for probe in probes:
            probe.stop()

    failures = [f for probe in probes for f in probe.failures] + dropped
    assert failures == [], failures[:10]
    assert all(probe.served > 10 for probe in probes)
    assert server.proc.poll() is None

    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        client.sendmail(
            "sender@example.org", ["carol@localhost"], b"Subject: hi\r\n\r\nhi\r\n"
        )
    [path] = server.delivered("carol")
    assert read_delivery(path).delivered_to == "carol@localhost"


def test_sighup_never_drops_a_session_silently(start_mailfast) -> None:
    server = start_mailfast()
    old_workers = server.worker_pids()
    with open_session(server.host, server.port) as wire:
        server.signal(signal.SIGHUP)
        # Until the old generation is gone, or long enough for it to have
        # done whatever it does to a session that sits between transactions.
        deadline = time.monotonic() + 3
        while server.worker_pids() & old_workers and time.monotonic() < deadline:
            time.sleep(0.05)

        # Either the session goes on, or it was told why it ends (RFC 5321
        # §3.8: 421); a bare close looks to the client like a network fault.
        try:
            reply = wire.command("MAIL FROM:<sender@example.org>")
        except (EOFError, ConnectionResetError) as exc:
            pytest.fail(f"session closed without a reply: {exc}\n{server.log()}")
        assert reply.code in (250, 421), reply
        if reply.code == 250:
            assert wire.command("RCPT TO:<alice@localhost>").code == 250
            assert wire.command("DATA").code == 354
            wire.send(b"Subject: across a reload\r\n\r\nhi\r\n.\r\n")
            assert wire.reply().code == 250
            assert len(server.delivered("alice")) == 1


def test_sighup_with_a_broken_file_keeps_serving(start_mailfast) -> None:
    server = start_mailfast()
    server.config_path.write_text("[limits]\nmax_recipents = 5\n")

    server.signal(signal.SIGHUP)

    deadline = time.monotonic() + 10
    while "max_recipents" not in server.log():
        assert time.monotonic() < deadline, f"no complaint logged:\n{server.log()}"
        time.sleep(0.05)
    time.sleep(0.5)  # time enough to have wrongly stopped workers
    assert server.proc.poll() is None
    assert len(server.worker_pids()) == server.workers
    # Still the old configuration: alice is there, and the port is unchanged.
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        client.sendmail(
            "sender@example.org", ["alice@localhost"], b"Subject: x\r\n\r\nx\r\n"
        )
    assert len(server.delivered("alice")) == 1
