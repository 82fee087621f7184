"""What the relay tests need around a real mailfast: DNS, peers, the queue.

A relaying mailfast is the conftest's ``MailfastServer`` with a ``[relay]``
section that points it at a loopback ``ZoneServer`` and a ``relay.port`` of
our choosing, and a ``[queue]`` section with back-off in seconds, not
minutes. The test zone sends ``remote.test`` to two mail exchangers on
127.0.0.2 and 127.0.0.3; whatever plays the MX (a ``ScriptedPeer``,
Postfix's ``smtp-sink``, a second mailfast) listens there on ``relay.port``,
one loopback address per host, so that "the first MX is down" is simply
nothing listening on 127.0.0.2.

Test modules import the fixtures (``fixture_zone``, ``fixture_relay_port``,
``fixture_start_relay``; pytest finds them in a module's namespace under
the names ``zone``, ``relay_port`` and ``start_relay``); the helpers are
plain functions.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import os
import pwd
import re
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.dnsserver import ZoneServer

from .server import MailfastServer
from .tools import require_tool

RELAY_DOMAIN = "remote.test"
MX1_HOST, MX1_ADDRESS = "mx1.remote.test", "127.0.0.2"
MX2_HOST, MX2_ADDRESS = "mx2.remote.test", "127.0.0.3"
NULL_MX_DOMAIN = "nullmx.test"  # RFC 7505: accepts no mail
NXDOMAIN_DOMAIN = "nowhere.test"  # not in the zone at all
SERVFAIL_DOMAIN = "servfail.test"  # its name server fails
SENDER = "alice@localhost"  # a local mailbox: bounces land in its Maildir
PEER_ADDRESSES = (MX1_ADDRESS, MX2_ADDRESS)

# Negative answers live for the SOA's minimum (RFC 2308 §5).
TEST_SOA = "ns.test. hostmaster.test. 1 3600 600 86400 300"

WAIT_S = 15.0  # for one relayed message; loads get their own limits
POLL_S = 0.05
QUEUE_COMMAND_TIMEOUT_S = 30.0
SINK_BACKLOG = 1000
SINK_STOP_TIMEOUT_S = 10.0

RELAY_LINE = re.compile(
    r"(?P<queue_id>\w+): to=<(?P<to>[^>]*)> relay=(?P<relay>\S+) .*"
    r"dsn=(?P<dsn>\d\.\d+\.\d+) status=(?P<status>sent|deferred|bounced) "
    r"\((?P<reply>.*)\)$",
    re.MULTILINE,
)


def zone_records() -> dict:
    """The records every relay test starts from."""
    return {
        "test": {"SOA": TEST_SOA},
        RELAY_DOMAIN: {"MX": [f"10 {MX1_HOST}", f"20 {MX2_HOST}"]},
        MX1_HOST: {"A": MX1_ADDRESS},
        MX2_HOST: {"A": MX2_ADDRESS},
        NULL_MX_DOMAIN: {"MX": "0 ."},
        SERVFAIL_DOMAIN: {"MX": f"10 {MX1_HOST}"},
    }


@pytest.fixture(name="zone")
def fixture_zone() -> Iterator[ZoneServer]:
    """A real DNS server on 127.0.0.1 serving ``zone_records()``."""
    with ZoneServer(zone_records()) as server:
        server.fail(SERVFAIL_DOMAIN)
        yield server
    assert server.errors == [], server.errors


@pytest.fixture(name="relay_port")
def fixture_relay_port() -> int:
    """A port free on every peer address: the MX port of the test zone."""
    for _ in range(20):
        with socket.socket() as probe:
            probe.bind((PEER_ADDRESSES[0], 0))
            port = probe.getsockname()[1]
            if all(_port_free(address, port) for address in PEER_ADDRESSES[1:]):
                return port
    pytest.fail("no port free on all the peer addresses")


def _port_free(address: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


@pytest.fixture(name="start_relay")
def fixture_start_relay(
    start_mailfast: Callable[..., MailfastServer], zone: ZoneServer, relay_port: int
) -> Callable[..., MailfastServer]:
    """Start a mailfast that relays through the test zone to ``relay_port``.

    Keyword sections merge into the relay defaults (``relay={...}``,
    ``queue={...}``) and then into the conftest's defaults. ``listen=(host,
    port)`` makes that the server's only listening address, for a mailfast
    that must be found at a given place (an MX, or one that loops).
    """

    def start(
        *, listen: tuple[str, int] | None = None, ready: bool = True, **sections
    ) -> MailfastServer:
        settings = {
            "relay": {
                "nameservers": [f"{zone.host}:{zone.port}"],
                "port": relay_port,
                "dns_timeout_s": 3.0,
                "connect_timeout_s": 5.0,
                "idle_reuse_s": 1.0,
            },
            "queue": {
                "min_backoff_s": 1.0,
                "max_backoff_s": 2.0,
                "scan_interval_s": 1.0,
            },
        }
        for section, values in sections.items():
            if section in settings:
                settings[section] = {**settings[section], **values}
            else:
                settings[section] = values
        if listen is not None:
            settings["server"] = {
                **settings.get("server", {}),
                "listen": [f"{listen[0]}:{listen[1]}"],
            }
        server = start_mailfast(ready=False, **settings)
        if listen is not None:
            server.host, server.port = listen
        if ready:
            server.wait_ready()
        return server

    return start


# --- sending ---------------------------------------------------------------


def make_message(
    subject: str, message_id: str, to: str = f"bob@{RELAY_DOMAIN}", extra: str = ""
) -> bytes:
    """A small message in CRLF whose Message-ID identifies it at the peer."""
    return (
        f"{extra}From: Alice <{SENDER}>\r\n"
        f"To: <{to}>\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: {message_id}\r\n"
        "\r\n"
        f"This is {subject}.\r\n"
    ).encode()


def send(
    server: MailfastServer,
    recipients: list[str],
    message: bytes,
    sender: str = SENDER,
) -> None:
    """Submit one message; every recipient must be accepted."""
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        refused = client.sendmail(sender, recipients, message)
    assert refused == {}, refused


# --- waiting and observing --------------------------------------------------


def wait_for(
    condition: Callable[[], object], timeout_s: float, what: Callable[[], str] | str
) -> object:
    """Poll ``condition`` until it is true; fail with ``what`` if it never is."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"after {timeout_s} s: {what() if callable(what) else what}")
        time.sleep(POLL_S)
    return value


def relay_lines(server: MailfastServer, status: str | None = None) -> list[dict]:
    """The per-recipient outcome lines the server logged, as dicts."""
    return [
        match.groupdict()
        for match in RELAY_LINE.finditer(server.log())
        if status is None or match["status"] == status
    ]


def queue_dir(server: MailfastServer) -> Path:
    return server.workdir / "var" / "queue"


def queued_files(server: MailfastServer) -> list[Path]:
    """Every message in the queue: deferred, or being delivered by a worker."""
    root = queue_dir(server)
    return sorted([*root.glob("deferred/*"), *root.glob("active/*/*")])


def queue_command(server: MailfastServer, *arguments: str) -> str:
    """``mailfast queue ARGS`` run the way an operator runs it; its stdout."""
    result = subprocess.run(
        [sys.executable, "-m", "mailfast", "queue", "--config", str(server.config_path)]
        + list(arguments),
        cwd=server.workdir,
        capture_output=True,
        text=True,
        timeout=QUEUE_COMMAND_TIMEOUT_S,
    )
    assert result.returncode == 0, (arguments, result.stdout, result.stderr)
    return result.stdout


def queue_listing(server: MailfastServer) -> dict[str, str]:
    """``mailfast queue`` parsed: queue id -> that message's block of lines."""
    entries: dict[str, str] = {}
    current = None
    for line in queue_command(server).splitlines():
        if line.startswith("--"):
            current = None
        elif line and not line[0].isspace():
            current = line.split()[0]
            entries[current] = line
        elif current is not None:
            entries[current] += "\n" + line
    return entries


def bounces(
    server: MailfastServer, mailbox: str = "alice"
) -> list[email.message.Message]:
    """Messages in the local mailbox that came from the null sender."""
    found = []
    for path in server.delivered(mailbox):
        message = email.message_from_bytes(
            path.read_bytes(), policy=email.policy.compat32
        )
        if message["Return-Path"] == "<>":
            found.append(message)
    return found


def delivery_status(bounce: email.message.Message) -> list[email.message.Message]:
    """The field groups of the report's message/delivery-status part.

    The first group is about the message, each further one about a
    recipient (RFC 3464 §2.1).
    """
    assert bounce.get_content_type() == "multipart/report", bounce.get_content_type()
    assert bounce.get_param("report-type") == "delivery-status"
    parts = [
        p for p in bounce.walk() if p.get_content_type() == "message/delivery-status"
    ]
    assert len(parts) == 1, [p.get_content_type() for p in bounce.walk()]
    groups = parts[0].get_payload()
    assert len(groups) >= 2, groups
    return groups


def returned_original(bounce: email.message.Message) -> email.message.Message:
    """The message returned inside a bounce (whole or headers only)."""
    for part in bounce.walk():
        if part.get_content_type() == "message/rfc822":
            [original] = part.get_payload()
            return original
        if part.get_content_type() == "text/rfc822-headers":
            return email.message_from_string(part.get_payload())
    pytest.fail("the bounce does not return the original message")


def message_ids(data: bytes) -> list[bytes]:
    return re.findall(rb"(?im)^Message-ID:[ \t]*(<[^>\r\n]*>)", data)


# --- Postfix's smtp-sink as an MX ---------------------------------------------


@contextmanager
def smtp_sink(address: str, port: int, dump_dir: Path) -> Iterator[Path]:
    """Run ``smtp-sink`` on address:port, one dump file per transaction.

    Yields the dump directory. The sink is stopped when the block ends, so
    the files are complete when they are read after it.
    """
    command = [require_tool("smtp-sink")]
    if os.geteuid() == 0:
        # It refuses to run as root without a user to switch to; this one
        # can still write the dump directory.
        command += ["-u", pwd.getpwuid(0).pw_name]
    dump_dir.mkdir(parents=True, exist_ok=True)
    command += ["-d", f"{dump_dir}/%H%M%S.", f"{address}:{port}", str(SINK_BACKLOG)]
    with open(dump_dir.parent / "smtp-sink.log", "wb") as log:
        sink = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
    try:
        wait_for(
            lambda: _listening(address, port) or sink.poll() is not None,
            WAIT_S,
            "smtp-sink does not listen",
        )
        assert sink.poll() is None, (dump_dir.parent / "smtp-sink.log").read_text()
        yield dump_dir
    finally:
        sink.send_signal(signal.SIGTERM)
        try:
            sink.wait(SINK_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            sink.kill()
            sink.wait()


def _listening(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1.0):
            return True
    except OSError:
        return False
