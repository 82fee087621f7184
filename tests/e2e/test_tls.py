"""TLS: STARTTLS (RFC 3207), implicit TLS (RFC 8314), and what they must not leak.

Real clients (swaks, smtplib, openssl s_client) check that ordinary TLS
works on every listener; raw sockets check the attacks: plain-text commands
pipelined behind STARTTLS (the "STARTTLS command injection" class of 2011),
protocol downgrade below TLS 1.2, and a certificate renewal that must
neither drop open sessions nor keep serving the old certificate.
"""

from __future__ import annotations

import base64
import signal
import smtplib
import socket
import ssl
import subprocess
import threading
import time
import warnings

import pytest

from .delivery import read_delivery
from .securityfixtures import (
    ALICE,
    ALICE_PASSWORD,
    BOB,
    PipeReader,
    SecureServer,
    SecureWire,
    extensions,
    fixture_start_secure,  # noqa: F401 - a fixture, found by pytest here
    greeted,
    send_message,
    small_message,
)
from .tools import require_tool

pytestmark = pytest.mark.e2e

TOOL_TIMEOUT_S = 30.0
RELOAD_TIMEOUT_S = 15.0


def received_with(path) -> str:
    """The ``with`` protocol of the Received field mailfast wrote (RFC 3848)."""
    received = read_delivery(path).received.decode("ascii", "replace")
    return received.split(" with ", 1)[1].split()[0]


def swaks_over_tls(
    secure: SecureServer, port: int, sender: str, recipient: str, *more: str
) -> subprocess.CompletedProcess:
    """swaks with STARTTLS, verifying the server against the test CA."""
    return subprocess.run(
        [
            require_tool("swaks"),
            *("--server", f"{secure.host}:{port}"),
            *("--from", sender, "--to", recipient),
            *("--tls", "--tls-verify", "--tls-ca-path", str(secure.pki.ca_path)),
            *("--tls-sni", "localhost", "--timeout", "20"),
            *more,
        ],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
    )


def test_swaks_starttls_on_the_smtp_listener(start_secure) -> None:
    secure = start_secure()
    result = swaks_over_tls(secure, secure.smtp_port, "sender@example.org", ALICE)

    assert result.returncode == 0, result.stdout + result.stderr
    assert " -> STARTTLS" in result.stdout
    assert "=== TLS started with cipher TLSv1." in result.stdout, result.stdout
    [path] = secure.server.delivered("alice")
    assert received_with(path) == "ESMTPS"


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_tls_and_auth_on_submission(start_secure, mechanism: str) -> None:
    secure = start_secure()
    result = swaks_over_tls(
        secure,
        secure.submission_port,
        ALICE,
        BOB,
        *("--auth", mechanism, "--auth-user", ALICE, "--auth-password", ALICE_PASSWORD),
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "235 2.7.0" in result.stdout, result.stdout
    [path] = secure.server.delivered("bob")
    assert received_with(path) == "ESMTPSA"
    assert ALICE_PASSWORD not in secure.server.log()


def test_smtplib_starttls_then_login_on_submission(start_secure) -> None:
    secure = start_secure()
    message = small_message("submitted over starttls", to=BOB)
    with smtplib.SMTP(secure.host, secure.submission_port, timeout=10) as client:
        client.ehlo("client.test")
        assert client.has_extn("starttls")
        assert not client.has_extn("auth")  # never offered in plain text
        code, _ = client.starttls(context=secure.pki.client_context())
        assert code == 220
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
        client.ehlo("client.test")
        assert not client.has_extn("starttls")
        assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        code, _ = client.login(ALICE, ALICE_PASSWORD)
        assert code == 235
        assert client.sendmail(ALICE, [BOB], message) == {}

    [path] = secure.server.delivered("bob")
    assert read_delivery(path).message == message
    assert received_with(path) == "ESMTPSA"


@pytest.mark.parametrize("listener", ["submissions", "submission"])
def test_openssl_s_client_full_transaction(start_secure, listener: str) -> None:
    secure = start_secure()
    implicit = listener == "submissions"
    port = secure.submissions_port if implicit else secure.submission_port
    command = [
        require_tool("openssl"),
        "s_client",
        "-connect",
        f"{secure.host}:{port}",
        "-quiet",  # only what the server sent, decrypted; also ignores our EOF
        "-nocommands",  # a line starting with R or Q is SMTP, not a command
        "-crlf",
        "-CAfile",
        str(secure.pki.ca_path),
        "-verify_return_error",
        "-verify_hostname",
        "localhost",
    ]
    if not implicit:
        command += ["-starttls", "smtp"]
    plain = base64.b64encode(f"\0{ALICE}\0{ALICE_PASSWORD}".encode()).decode()
    message = small_message(f"through s_client on {listener}")
    with subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as client:
        out = PipeReader(client)
        try:

            def command_line(line: str) -> None:
                client.stdin.write(line.encode() + b"\n")
                client.stdin.flush()

            if implicit:
                # The first octets on the port are TLS: s_client prints only
                # what it decrypted, so a banner here came over TLS.
                greeting = out.reply()
                assert greeting.code == 220, greeting
            # With -starttls, s_client read the banner and sent EHLO itself.
            command_line("EHLO client.test")
            ehlo = out.reply()
            assert ehlo.code == 250 and "AUTH PLAIN LOGIN" in extensions(ehlo), ehlo
            assert "STARTTLS" not in extensions(ehlo)
            command_line(f"AUTH PLAIN {plain}")
            assert out.reply().code == 235
            command_line(f"MAIL FROM:<{ALICE}>")
            assert out.reply().code == 250
            command_line(f"RCPT TO:<{ALICE}>")
            assert out.reply().code == 250
            command_line("DATA")
            assert out.reply().code == 354
            client.stdin.write(message.replace(b"\r\n", b"\n") + b".\n")
            client.stdin.flush()
            done = out.reply()
            assert (done.code, done.enhanced) == (250, "2.0.0"), done
            command_line("QUIT")
            assert out.reply().code == 221
        finally:
            client.stdin.close()
            try:
                client.wait(TOOL_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                client.kill()
                client.wait()
        stderr = client.stderr.read().decode("utf-8", "replace")
    assert client.returncode == 0, stderr

    [path] = secure.server.delivered("alice")
    assert read_delivery(path).message == message
    assert received_with(path) == "ESMTPSA"


@pytest.mark.parametrize("listener", ["smtp", "submission"])
def test_commands_pipelined_behind_starttls_are_dropped(
    start_secure, listener: str
) -> None:
    secure = start_secure()
    port = secure.smtp_port if listener == "smtp" else secure.submission_port
    context = secure.pki.client_context()
    with greeted(secure.host, port) as wire:
        # One write: the 220 comes back, then the client goes TLS. Had the
        # server kept the rest, it would answer it inside the TLS session.
        wire.send(b"STARTTLS\r\nRSET\r\nMAIL FROM:<evil@x.test>\r\n")
        reply = wire.reply()
        assert (reply.code, reply.enhanced) == (220, "2.0.0"), reply
        wire.wrap(context)

        # The first reply over TLS answers the first command sent over TLS.
        # Before EHLO nothing goes: the EHLO from before TLS counts for nothing.
        reply = wire.command("MAIL FROM:<alice@localhost>")
        assert (reply.code, reply.enhanced) == (503, "5.5.1"), reply
        ehlo = wire.command("EHLO client.test")
        assert ehlo.code == 250, ehlo
        assert "STARTTLS" not in extensions(ehlo)
        # No MAIL survived the handshake, pipelined or otherwise.
        reply = wire.command("RCPT TO:<alice@localhost>")
        assert (reply.code, reply.enhanced) == (503, "5.5.1"), reply
        assert "MAIL" in reply.text, reply
        assert wire.silent_for(0.3) == b""

        if listener == "smtp":
            message = small_message("after a refused injection")
            reply = send_message(wire, "sender@example.org", ALICE, message)
            assert (reply.code, reply.enhanced) == (250, "2.0.0"), reply

    if listener == "smtp":
        [path] = secure.server.delivered("alice")
        assert read_delivery(path).return_path == "<sender@example.org>"
    assert "evil@x.test" not in secure.server.log()


def test_no_starttls_without_a_certificate(start_secure) -> None:
    secure = start_secure(tls=None)
    for port in (secure.smtp_port, secure.submission_port):
        with greeted(secure.host, port) as wire:
            ehlo = wire.command("EHLO client.test")
            assert not any(line.startswith("STARTTLS") for line in extensions(ehlo))
            reply = wire.command("STARTTLS")
            assert (reply.code, reply.enhanced) == (502, "5.5.1"), reply
            # Still plain text, still answering.
            assert wire.command("NOOP").code == 250


def _old_tls_client() -> ssl.SSLContext:
    """A client that speaks TLS 1.0 and 1.1 only, as an outdated MUA would."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # Security level 0: OpenSSL would otherwise refuse TLS < 1.2 on our side
    # and never ask the server at all.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # that is the point
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    return context


def _tls_12_client(secure: SecureServer) -> ssl.SSLContext:
    context = secure.pki.client_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


def _version_a_lenient_server_gets(client: ssl.SSLContext, secure: SecureServer) -> str:
    """The version ``client`` negotiates with a server that still takes TLS 1.0.

    The control for the refusals below: it shows they are mailfast's doing,
    and not this OpenSSL declining to offer old versions at all.
    """
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(secure.pki.certificate_path, secure.pki.key_path)
    server_context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server_context.minimum_version = ssl.TLSVersion.TLSv1
    with socket.create_server(("127.0.0.1", 0)) as listener:
        with socket.create_connection(listener.getsockname(), timeout=10) as plain:
            accepted, _ = listener.accept()
            result: list[str] = []

            def serve() -> None:
                try:
                    with server_context.wrap_socket(accepted, server_side=True) as tls:
                        result.append(tls.version())
                except (OSError, ssl.SSLError):
                    accepted.close()

            server = threading.Thread(target=serve, name="lenient-tls")
            server.start()
            try:
                with client.wrap_socket(plain) as tls:
                    version = tls.version()
            finally:
                server.join(10)
    assert result == [version], result
    return version


@pytest.mark.parametrize("listener", ["submissions", "starttls"])
def test_tls_below_1_2_is_refused(start_secure, listener: str) -> None:
    secure = start_secure()
    old_client = _old_tls_client()
    assert _version_a_lenient_server_gets(old_client, secure) == "TLSv1.1"

    def handshake(context: ssl.SSLContext) -> SecureWire:
        if listener == "submissions":
            return SecureWire(secure.host, secure.submissions_port, tls_context=context)
        wire = greeted(secure.host, secure.smtp_port)
        try:
            wire.starttls(context)
        except BaseException:
            wire.close()
            raise
        return wire

    # The server ends the handshake: it closes rather than send a
    # protocol_version alert, and either is a refusal. A client-side failure
    # (no protocols available) would be a different error.
    with pytest.raises((ssl.SSLError, ConnectionResetError)) as refused:
        handshake(old_client).close()
    if isinstance(refused.value, ssl.SSLError):
        assert refused.value.reason in (
            "UNEXPECTED_EOF_WHILE_READING",
            "TLSV1_ALERT_PROTOCOL_VERSION",
        ), refused.value
    if listener == "starttls":
        wait_for_log(secure, "TLS handshake failed from [127.0.0.1]")
        assert "UNSUPPORTED_PROTOCOL" in secure.server.log()

    # The same port with TLS 1.2 as the ceiling, and with no ceiling; either
    # way the session is then served.
    for context, version in (
        (_tls_12_client(secure), "TLSv1.2"),
        (secure.pki.client_context(), "TLSv1.3"),
    ):
        with handshake(context) as wire:
            assert wire.tls_version() == version
            if listener == "submissions":
                assert wire.reply().code == 220
            assert wire.command("EHLO client.test").code == 250


def wait_for_log(secure: SecureServer, text: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in secure.server.log():
        if time.monotonic() > deadline:
            pytest.fail(f"{text!r} not logged within {timeout_s} s")
        time.sleep(0.05)


def _first_certificate(path) -> bytes:
    pem = path.read_text(encoding="ascii")
    end = "-----END CERTIFICATE-----"
    return ssl.PEM_cert_to_DER_cert(pem[: pem.index(end) + len(end)] + "\n")


def test_sighup_reloads_the_certificate_and_keeps_open_sessions(
    start_secure,
) -> None:
    secure = start_secure(server={"shutdown_grace_s": 20.0})
    old_context = secure.pki.client_context()
    old_certificate = _first_certificate(secure.pki.certificate_path)
    message = small_message("across a certificate reload")

    with greeted(secure.host, secure.smtp_port) as session:
        session.starttls(old_context)
        assert session.peer_certificate() == old_certificate
        assert session.command("EHLO client.test").code == 250
        assert session.command("MAIL FROM:<sender@example.org>").code == 250
        assert session.command(f"RCPT TO:<{ALICE}>").code == 250

        # Renew: a certificate from another CA in the same files, then SIGHUP.
        secure.pki.reissue()
        new_certificate = _first_certificate(secure.pki.certificate_path)
        assert new_certificate != old_certificate
        secure.server.signal(signal.SIGHUP)

        # New connections get the new certificate once the new workers serve.
        new_context = secure.pki.client_context()
        presented = _wait_for_certificate(secure, new_context, new_certificate)
        assert presented == new_certificate

        # The session opened before the reload is still there, and finishes.
        assert session.command("DATA").code == 354
        session.send(message + b".\r\n")
        reply = session.reply()
        assert (reply.code, reply.enhanced) == (250, "2.0.0"), reply
        assert session.command("QUIT").code == 221

    [path] = secure.server.delivered("alice")
    assert read_delivery(path).message == message
    # STARTTLS on the SMTP port too.
    with greeted(secure.host, secure.smtp_port) as wire:
        wire.starttls(new_context)
        assert wire.peer_certificate() == new_certificate


def _wait_for_certificate(
    secure: SecureServer, context: ssl.SSLContext, wanted: bytes
) -> bytes:
    """Connect to port 465 until the new certificate is presented; it, or fail."""
    deadline = time.monotonic() + RELOAD_TIMEOUT_S
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with SecureWire(
                secure.host, secure.submissions_port, tls_context=context
            ) as wire:
                presented = wire.peer_certificate()
                assert wire.reply().code == 220
                wire.command("QUIT")
                if presented == wanted:
                    return presented
        except ssl.SSLCertVerificationError as exc:  # an old worker answered
            last_error = exc
        time.sleep(0.1)
    pytest.fail(
        f"no connection presented the new certificate within {RELOAD_TIMEOUT_S} s;"
        f" last error: {last_error}"
    )
