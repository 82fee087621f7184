"""What the security tests need around a real mailfast: a CA, users, clients.

A secured mailfast is the conftest's ``MailfastServer`` with a ``[tls]``
section pointing at a certificate for ``localhost`` and 127.0.0.1 issued by
a throw-away test CA (``trustme``), a submission port (STARTTLS, RFC 6409), a
submissions port (implicit TLS, RFC 8314) and a users file made with
``UserDatabase``, the code behind ``mailfast user``.

``SecureWire`` is ``SmtpWire`` with what these tests add to a raw client: a
chosen source address on loopback (127.0.0.2 is another client to mailfast,
127.0.0.5 one outside the trusted networks) and a switch to TLS at a moment
the test decides, after exactly the bytes it decided to send.

Test modules import the fixture (``fixture_start_secure``; pytest finds it
in a module's namespace as ``start_secure``); the rest are plain helpers.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from mailfast.users import UserDatabase

from .server import MailfastServer, free_port
from .wire import Reply, SmtpWire

TLS_NAME = "localhost"  # what clients verify the server certificate against
ALICE = "alice@localhost"  # a user, and a local mailbox of the test domain
ALICE_PASSWORD = "correct horse battery staple"
ALICE_SENDERS = ("postmaster@localhost",)  # may send as these besides her login
BOB = "bob@localhost"
BOB_PASSWORD = "Tr0ub4dor&3"


# --- certificates ------------------------------------------------------------


class CertificateFiles:
    """A test CA and the server certificate it issued, as files mailfast reads.

    ``reissue`` puts a certificate from a brand-new CA in the same files, as
    an operator renewing a certificate does; ``ca`` is then the new CA.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca: trustme.CA
        self.reissue()

    @property
    def certificate_path(self) -> Path:
        return self.directory / "server-chain.pem"

    @property
    def key_path(self) -> Path:
        return self.directory / "server-key.pem"

    @property
    def ca_path(self) -> Path:
        return self.directory / "ca.pem"

    def reissue(self) -> None:
        self.ca = trustme.CA()
        leaf = self.ca.issue_cert(TLS_NAME, "127.0.0.1", "::1")
        self.key_path.write_bytes(leaf.private_key_pem.bytes())
        self.certificate_path.write_bytes(
            b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
        )
        self.ca.cert_pem.write_to_path(str(self.ca_path))

    def client_context(self) -> ssl.SSLContext:
        """Verifies the server against this CA only, as a careful client does."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        context.load_verify_locations(cadata=self.ca.cert_pem.bytes().decode("ascii"))
        return context

    def tls_settings(self) -> dict:
        return {"certificate": str(self.certificate_path), "key": str(self.key_path)}


# --- users -------------------------------------------------------------------


def write_users(path: Path, users: dict[str, tuple[str, tuple[str, ...]]]) -> Path:
    """A users file: login -> (password, extra senders)."""
    database = UserDatabase.load(path)
    for login, (password, senders) in users.items():
        database.add(login, password, senders)
    return path


DEFAULT_USERS = {
    ALICE: (ALICE_PASSWORD, ALICE_SENDERS),
    BOB: (BOB_PASSWORD, ()),
}


# --- a secured server ----------------------------------------------------------


@dataclass
class SecureServer:
    """A running mailfast with TLS, the two submission ports and users."""

    server: MailfastServer
    pki: CertificateFiles
    submission_port: int  # STARTTLS, then AUTH before MAIL
    submissions_port: int  # TLS from the first octet

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def smtp_port(self) -> int:
        return self.server.port


@pytest.fixture(name="start_secure")
def fixture_start_secure(
    start_mailfast: Callable[..., MailfastServer], tmp_path: Path
) -> Callable[..., SecureServer]:
    """Start a mailfast with TLS, submission ports and the default users.

    Keyword sections merge over the secure defaults (``auth={...}``,
    ``tls={...}``), then into the conftest's; ``tls=None`` configures no
    certificate at all (and no submissions port, which needs one).
    ``workers=`` is passed on.
    """
    started = 0

    def start(*, workers: int = 2, users=DEFAULT_USERS, **sections) -> SecureServer:
        nonlocal started
        started += 1
        private = tmp_path / f"secrets{started}"
        pki = CertificateFiles(private)
        users_file = write_users(private / "users", users)
        submission_port, submissions_port = _two_more_ports()
        with_tls = sections.pop("tls", {}) is not None
        settings = {
            "server": {
                "submission": [f"127.0.0.1:{submission_port}"],
                "submissions": [f"127.0.0.1:{submissions_port}"] if with_tls else [],
            },
            "tls": pki.tls_settings() if with_tls else {},
            "auth": {"users_file": str(users_file)},
            # Mail relayed after AUTH must not leave loopback: DNS questions
            # go to a port where nobody answers, and the message defers.
            "relay": {
                "nameservers": [f"127.0.0.1:{free_port()}"],
                "dns_timeout_s": 1.0,
            },
        }
        for section, values in sections.items():
            settings[section] = {**settings.get(section, {}), **values}
        if not settings["tls"]:
            del settings["tls"]
        server = start_mailfast(workers=workers, **settings)
        return SecureServer(server, pki, submission_port, submissions_port)

    return start


def _two_more_ports() -> tuple[int, int]:
    ports: set[int] = set()
    while len(ports) < 2:
        ports.add(free_port())
    first, second = sorted(ports)
    return first, second


# --- clients -----------------------------------------------------------------


class SecureWire(SmtpWire):
    """``SmtpWire`` from a chosen loopback address, able to switch to TLS.

    ``tls_context`` makes the connection TLS from its first octet (port 465).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        source: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.timeout = timeout
        self._pending = b""
        self.sock = socket.create_connection(
            (host, port),
            timeout=timeout,
            source_address=(source, 0) if source else None,
        )
        if tls_context is not None:
            self.wrap(tls_context)

    def wrap(self, context: ssl.SSLContext) -> None:
        """Run the TLS handshake on the connection as it stands."""
        # Anything the server sent in plain text after its 220 would be lost
        # here, and would be a bug of its own: say so rather than drop it.
        assert self._pending == b"", f"plain text after 220: {self._pending!r}"
        plain = self.sock
        try:
            self.sock = context.wrap_socket(plain, server_hostname=TLS_NAME)
        except BaseException:
            plain.close()
            raise

    def starttls(self, context: ssl.SSLContext) -> None:
        reply = self.command("STARTTLS")
        assert (reply.code, reply.enhanced) == (220, "2.0.0"), reply
        self.wrap(context)

    def peer_certificate(self) -> bytes:
        assert isinstance(self.sock, ssl.SSLSocket), "not a TLS connection"
        return self.sock.getpeercert(binary_form=True)

    def tls_version(self) -> str:
        assert isinstance(self.sock, ssl.SSLSocket), "not a TLS connection"
        return self.sock.version()


def greeted(
    host: str,
    port: int,
    *,
    source: str | None = None,
    tls_context: ssl.SSLContext | None = None,
    helo: str = "client.test",
) -> SecureWire:
    """Connected, greeted with 220 and past EHLO; the caller closes it."""
    wire = SecureWire(host, port, source=source, tls_context=tls_context)
    try:
        greeting = wire.reply()
        assert greeting.code == 220, greeting
        ehlo = wire.command(f"EHLO {helo}")
        assert ehlo.code == 250, ehlo
    except BaseException:
        wire.close()
        raise
    return wire


def extensions(ehlo: Reply) -> set[str]:
    """The EHLO keywords and their parameters, upper case: {"AUTH PLAIN LOGIN", ...}"""
    return {line.upper() for line in ehlo.lines[1:]}


def small_message(subject: str, sender: str = ALICE, to: str = ALICE) -> bytes:
    return (
        f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@client.test>\r\n"
        f"\r\nThis is {subject}.\r\n"
    ).encode("ascii")


def send_message(wire: SmtpWire, sender: str, recipient: str, message: bytes) -> Reply:
    """One whole transaction on an open session; the reply to the final dot."""
    reply = wire.command(f"MAIL FROM:<{sender}>")
    assert reply.code == 250, reply
    reply = wire.command(f"RCPT TO:<{recipient}>")
    assert reply.code == 250, reply
    reply = wire.command("DATA")
    assert reply.code == 354, reply
    wire.send(message + b".\r\n")
    return wire.reply()


# --- a line-at-a-time view of a child's output --------------------------------


class PipeReader:
    """Lines from a child's stdout, each awaited no longer than a deadline.

    For tools driven interactively (``openssl s_client``): a blocking
    ``readline`` would hang the test on a server that stays silent.
    """

    def __init__(self, process: subprocess.Popen) -> None:
        self.fd = process.stdout.fileno()
        self.pending = b""
        self.seen = b""  # everything read, for failure messages

    def line(self, timeout_s: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no line within {timeout_s} s; read {self.seen!r}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    raise EOFError(f"output ended; read {self.seen!r}")
                self.pending += chunk
                self.seen += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return line.rstrip(b"\r")

    def reply(self, timeout_s: float = 10.0) -> Reply:
        """One SMTP reply, multi-line or not."""
        lines = []
        while True:
            line = self.line(timeout_s)
            assert line[:3].isdigit(), f"not an SMTP reply line: {line!r}"
            lines.append(line[4:].decode("utf-8", "replace"))
            if line[3:4] != b"-":
                return Reply(int(line[:3]), tuple(lines))
