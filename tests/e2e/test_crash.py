"""A worker killed with SIGKILL under load: no acknowledged message is lost.

The promise behind every 250 after DATA is that the message is already on
disk in new/. So whatever a SIGKILL interrupts, each Message-ID a client saw
acknowledged must be found complete in new/, and new/ must never hold a
partial file. Messages the killed worker had not acknowledged are retried by
the clients, as a real MTA would; a copy that was written but whose 250 was
lost comes twice, which SMTP permits.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import smtplib
import threading
import time

import pytest

from .delivery import read_delivery
from .server import MailfastServer

pytestmark = pytest.mark.e2e

MESSAGES = 2000
CLIENTS = 8
KILL_AFTER = MESSAGES // 4  # acknowledgements before the kill
ATTEMPTS = 20  # per message, before a client gives up on it
LOAD_LIMIT_S = 120.0


def make_message(number: int) -> bytes:
    """About 16 KiB, every line unique, so truncation anywhere shows."""
    head = (
        b"From: load@example.org\r\n"
        b"To: alice@localhost\r\n"
        b"Subject: load %d\r\n"
        b"Message-ID: <load-%d@example.org>\r\n"
        b"\r\n"
    ) % (number, number)
    lines = b"".join(
        b"message %06d line %03d %s\r\n" % (number, line, b"x" * 50)
        for line in range(200)
    )
    return head + lines + b"end of message %06d\r\n" % number


def number_of(message_id: bytes) -> int:
    return int(re.fullmatch(rb"<load-(\d+)@example\.org>", message_id).group(1))


class LoadClient(threading.Thread):
    """Sends messages from a shared queue over one reused connection.

    A failed connection or transaction is retried on a fresh connection, as an
    MTA would. Only a completed ``sendmail`` (250 after DATA) is recorded as
    acknowledged.
    """

    def __init__(self, server: MailfastServer, work: queue.Queue, ledger: Ledger):
        super().__init__(daemon=True)
        self.server = server
        self.work = work
        self.ledger = ledger

    def run(self) -> None:
        client = None
        try:
            while not self.ledger.stopping.is_set():
                try:
                    number = self.work.get_nowait()
                except queue.Empty:
                    return
                for _ in range(ATTEMPTS):
                    if self.ledger.stopping.is_set():
                        return
                    try:
                        if client is None:
                            client = smtplib.SMTP(timeout=15)
                            client.connect(self.server.host, self.server.port)
                        client.sendmail(
                            "load@example.org",
                            ["alice@localhost"],
                            make_message(number),
                        )
                        self.ledger.acknowledge(number)
                        break
                    except (OSError, smtplib.SMTPException) as exc:
                        self.ledger.fail(number, exc)
                        if client is not None:
                            client.close()
                            client = None
                        time.sleep(0.05)
                else:
                    self.ledger.give_up(number)
        except BaseException as exc:  # never let a thread die silently
            self.ledger.give_up(-1, exc)
        finally:
            if client is not None:
                client.close()


class Ledger:
    """What the clients saw, shared between their threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.acknowledged: set[int] = set()
        self.failures: list[str] = []
        self.abandoned: list[str] = []

    def acknowledge(self, number: int) -> None:
        with self.lock:
            self.acknowledged.add(number)

    def fail(self, number: int, exc: BaseException) -> None:
        with self.lock:
            self.failures.append(f"{number}: {type(exc).__name__}: {exc}")

    def give_up(self, number: int, exc: BaseException | None = None) -> None:
        with self.lock:
            self.abandoned.append(f"{number}: {exc!r}")

    def count(self) -> int:
        with self.lock:
            return len(self.acknowledged)


def wait_for(condition, timeout_s: float, what: str, server: MailfastServer):
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout_s} s; log:\n{server.log()[-5000:]}")
        time.sleep(0.02)
    return result


def test_sigkill_of_a_worker_loses_no_acknowledged_message(mailfast) -> None:
    work: queue.Queue[int] = queue.Queue()
    for number in range(MESSAGES):
        work.put(number)
    ledger = Ledger()
    clients = [LoadClient(mailfast, work, ledger) for _ in range(CLIENTS)]
    for client in clients:
        client.start()

    try:
        wait_for(
            lambda: ledger.count() >= KILL_AFTER, 60, "load never got going", mailfast
        )
        before = mailfast.worker_pids()
        victim = min(before)
        survivor = max(before)
        os.kill(victim, signal.SIGKILL)
        replacements = wait_for(
            lambda: mailfast.worker_pids() - before,
            15,
            "no replacement worker",
            mailfast,
        )
        acknowledged_at_kill = ledger.count()

        deadline = time.monotonic() + LOAD_LIMIT_S
        for client in clients:
            client.join(timeout=max(0.0, deadline - time.monotonic()))
        assert not any(c.is_alive() for c in clients), "load did not finish"
    finally:
        ledger.stopping.set()
        for client in clients:
            client.join(timeout=30)

    # The master replaced the dead worker and left the other one alone.
    assert acknowledged_at_kill < MESSAGES, "the kill came after the load"
    [replacement] = replacements
    workers = mailfast.worker_pids()
    assert victim not in workers
    assert workers == {survivor, replacement}
    wait_for(
        lambda: f"worker {replacement} started" in mailfast.log(),
        10,
        "the replacement never reported for work",
        mailfast,
    )

    # Every message went through in the end, retries included.
    assert ledger.abandoned == []
    assert ledger.acknowledged == set(range(MESSAGES))
    # Only the killed worker's sessions may have failed, not a cascade.
    assert len(ledger.failures) <= 2 * CLIENTS, ledger.failures

    # new/ holds only complete messages, and every acknowledged one.
    delivered: dict[int, int] = {}
    for path in mailfast.delivered("alice"):
        delivery = read_delivery(path)
        number = number_of(delivery.message_id)
        assert delivery.message == make_message(number), f"{path.name} is partial"
        delivered[number] = delivered.get(number, 0) + 1
    assert set(delivered) >= ledger.acknowledged
    duplicates = sum(delivered.values()) - len(delivered)
    assert duplicates <= len(ledger.failures)

    # tmp/ may keep what the killed worker was writing, nothing more.
    leftovers = mailfast.unfinished("alice")
    assert len(leftovers) <= CLIENTS
    print(
        f"killed {victim} after {acknowledged_at_kill} acknowledgements; "
        f"{len(ledger.failures)} failed attempts, {duplicates} duplicates, "
        f"{len(leftovers)} files left in tmp/"
    )


def test_stuck_worker_is_replaced(start_mailfast) -> None:
    # SIGSTOP freezes a worker's loop the way an endless computation would:
    # its heartbeat stops, so the master must kill it and start another.
    server = start_mailfast(server={"worker_timeout_s": 2.0})
    before = server.worker_pids()
    frozen = min(before)
    os.kill(frozen, signal.SIGSTOP)
    try:
        replacements = wait_for(
            lambda: server.worker_pids() - before, 20, "no replacement", server
        )
        wait_for(lambda: frozen not in server.worker_pids(), 10, "not killed", server)
    finally:
        try:  # a frozen worker left behind would never drain at teardown
            os.kill(frozen, signal.SIGCONT)
        except ProcessLookupError:
            pass

    assert len(replacements) == 1
    assert len(server.worker_pids()) == server.workers
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        client.sendmail("load@example.org", ["alice@localhost"], make_message(1))
    assert len(server.delivered("alice")) == 1
