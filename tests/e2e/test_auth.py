"""SMTP AUTH (RFC 4954) with PLAIN (RFC 4616) and LOGIN, as a submission server.

Every exchange runs over TLS on the submission port unless the test is about
what happens without it. The users come from ``securityfixtures``: alice,
who may also send as postmaster@localhost, and bob.
"""

from __future__ import annotations

import base64
import subprocess

import pytest

from .securityfixtures import (
    ALICE,
    ALICE_PASSWORD,
    BOB,
    BOB_PASSWORD,
    SecureServer,
    SecureWire,
    extensions,
    fixture_start_secure,  # noqa: F401 - a fixture, found by pytest here
    greeted,
    send_message,
    small_message,
)
from .server import mailfast_command

pytestmark = pytest.mark.e2e

REMOTE = "someone@remote.test"  # not one of our domains: relaying
UNKNOWN_LOGIN = "mallory@localhost"
# Distinctive, so that any trace of it in a log is found.
SECRET = "Zq8-vX!secret-never-log-9w2"


def b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def plain(login: str, password: str) -> str:
    """The PLAIN response: empty authzid, login, password (RFC 4616 §2)."""
    return b64(f"\0{login}\0{password}")


def xoauth2(login: str, token: str) -> str:
    """The initial response of Google's XOAUTH2, which carries an OAuth token."""
    return b64(f"user={login}\x01auth=Bearer {token}\x01\x01")


def submission_over_tls(secure: SecureServer, source: str | None = None) -> SecureWire:
    """A submission session after STARTTLS and a second EHLO; not logged in."""
    wire = greeted(secure.host, secure.submission_port, source=source)
    try:
        wire.starttls(secure.pki.client_context())
        ehlo = wire.command("EHLO client.test")
        assert "AUTH PLAIN LOGIN" in extensions(ehlo), ehlo
    except BaseException:
        wire.close()
        raise
    return wire


def assert_reply(reply, code: int, enhanced: str = "") -> None:
    assert reply.code == code and (not enhanced or reply.enhanced == enhanced), reply


# --- mechanisms -----------------------------------------------------------------


def test_plain_with_and_without_initial_response(start_secure) -> None:
    secure = start_secure()
    with submission_over_tls(secure) as wire:
        assert_reply(
            wire.command(f"AUTH PLAIN {plain(ALICE, ALICE_PASSWORD)}"), 235, "2.7.0"
        )
        # Logged in: AUTH is neither offered nor accepted again.
        assert not any(
            e.startswith("AUTH") for e in extensions(wire.command("EHLO c.test"))
        )
        assert_reply(
            wire.command(f"AUTH PLAIN {plain(BOB, BOB_PASSWORD)}"), 503, "5.5.1"
        )

    with submission_over_tls(secure) as wire:
        challenge = wire.command("AUTH PLAIN")
        assert challenge.code == 334 and challenge.lines == ("",), challenge
        assert_reply(wire.command(plain(BOB, BOB_PASSWORD)), 235, "2.7.0")
        assert_reply(wire.command(f"MAIL FROM:<{BOB}>"), 250)


def test_login_with_and_without_initial_response(start_secure) -> None:
    secure = start_secure()
    with submission_over_tls(secure) as wire:
        username = wire.command("AUTH LOGIN")
        assert username.code == 334, username
        assert base64.b64decode(username.lines[0]) == b"Username:"
        password = wire.command(b64(ALICE))
        assert password.code == 334, password
        assert base64.b64decode(password.lines[0]) == b"Password:"
        assert_reply(wire.command(b64(ALICE_PASSWORD)), 235, "2.7.0")
        assert_reply(wire.command(f"MAIL FROM:<{ALICE}>"), 250)

    with submission_over_tls(secure) as wire:
        password = wire.command(f"AUTH LOGIN {b64(BOB)}")
        assert password.code == 334, password
        assert base64.b64decode(password.lines[0]) == b"Password:"
        assert_reply(wire.command(b64(BOB_PASSWORD)), 235, "2.7.0")


def test_star_cancels_the_exchange(start_secure) -> None:
    secure = start_secure()
    with submission_over_tls(secure) as wire:
        assert wire.command("AUTH PLAIN").code == 334
        assert_reply(wire.command("*"), 501, "5.7.0")
        assert wire.command("AUTH LOGIN").code == 334
        assert wire.command(b64(ALICE)).code == 334
        assert_reply(wire.command("*"), 501, "5.7.0")
        # Cancelled, not logged in, and the session goes on.
        assert_reply(wire.command(f"MAIL FROM:<{ALICE}>"), 530, "5.7.0")
        assert_reply(wire.command(f"AUTH PLAIN {plain(ALICE, ALICE_PASSWORD)}"), 235)


def test_wrong_password_and_unknown_user_get_the_same_535(start_secure) -> None:
    secure = start_secure()
    with submission_over_tls(secure) as wire:
        wrong = wire.command(f"AUTH PLAIN {plain(ALICE, 'not her password')}")
        assert_reply(wrong, 535, "5.7.8")
        unknown = wire.command(f"AUTH PLAIN {plain(UNKNOWN_LOGIN, ALICE_PASSWORD)}")
        assert unknown == wrong  # nothing tells which logins exist
        assert wire.command("AUTH LOGIN").code == 334
        assert wire.command(b64(UNKNOWN_LOGIN)).code == 334
        assert wire.command(b64("whatever")) == wrong
        # Her password, but asking to act as bob: refused like bad credentials.
        as_bob = b64("\0".join([BOB, ALICE, ALICE_PASSWORD]))
        acting = wire.command(f"AUTH PLAIN {as_bob}")
        assert_reply(acting, 535, "5.7.8")
        assert_reply(wire.command(f"MAIL FROM:<{ALICE}>"), 530, "5.7.0")


def test_user_added_while_serving_logs_in_without_a_reload(start_secure) -> None:
    secure = start_secure()
    carol, password = "carol@localhost", "carol's new password"
    with submission_over_tls(secure) as wire:
        assert_reply(wire.command(f"AUTH PLAIN {plain(carol, password)}"), 535)

    added = subprocess.run(
        [*mailfast_command(), "user", "add", carol, "--password-stdin"]
        + ["--config", str(secure.server.config_path)],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert added.returncode == 0, added.stderr
    with submission_over_tls(secure) as wire:
        assert_reply(wire.command(f"AUTH PLAIN {plain(carol, password)}"), 235)

    subprocess.run(
        [*mailfast_command(), "user", "del", carol]
        + ["--config", str(secure.server.config_path)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    with submission_over_tls(secure) as wire:
        assert_reply(wire.command(f"AUTH PLAIN {plain(carol, password)}"), 535)


# --- where AUTH is offered ------------------------------------------------------


def test_no_auth_before_tls_on_submission(start_secure) -> None:
    secure = start_secure()
    with greeted(secure.host, secure.submission_port) as wire:
        ehlo = wire.command("EHLO client.test")
        assert "STARTTLS" in extensions(ehlo)
        assert not any(e.startswith("AUTH") for e in extensions(ehlo)), ehlo
        assert_reply(
            wire.command(f"AUTH PLAIN {plain(ALICE, ALICE_PASSWORD)}"), 538, "5.7.11"
        )
        assert_reply(wire.command("AUTH LOGIN"), 538, "5.7.11")
        assert_reply(wire.command(f"MAIL FROM:<{ALICE}>"), 530, "5.7.0")


def test_plaintext_auth_on_loopback_when_allowed(start_secure) -> None:
    secure = start_secure(auth={"allow_plaintext_on_loopback": True})
    with greeted(secure.host, secure.submission_port) as wire:
        ehlo = wire.command("EHLO client.test")
        assert "AUTH PLAIN LOGIN" in extensions(ehlo), ehlo
        assert_reply(wire.command(f"AUTH PLAIN {plain(ALICE, ALICE_PASSWORD)}"), 235)
        assert_reply(wire.command(f"MAIL FROM:<{ALICE}>"), 250)


def test_submission_requires_auth_before_mail(start_secure) -> None:
    secure = start_secure()
    with submission_over_tls(secure) as wire:
        # TLS alone is not enough.
        assert_reply(wire.command(f"MAIL FROM:<{ALICE}>"), 530, "5.7.0")
        assert_reply(wire.command(f"RCPT TO:<{ALICE}>"), 503)
    # The same on the implicit-TLS port.
    context = secure.pki.client_context()
    with greeted(secure.host, secure.submissions_port, tls_context=context) as wire:
        assert_reply(wire.command(f"MAIL FROM:<{ALICE}>"), 530, "5.7.0")


def test_auth_lets_a_user_relay(start_secure) -> None:
    # Nobody is trusted by address: only a login grants relaying.
    secure = start_secure(relay={"trusted_networks": []}, auth={"offer_on_smtp": True})

    with submission_over_tls(secure) as wire:
        assert_reply(wire.command(f"AUTH PLAIN {plain(ALICE, ALICE_PASSWORD)}"), 235)
        reply = send_message(wire, ALICE, REMOTE, small_message("relayed", to=REMOTE))
        assert_reply(reply, 250, "2.0.0")

    # On the SMTP port (with offer_on_smtp): refused before AUTH, fine after.
    with greeted(secure.host, secure.smtp_port) as wire:
        wire.starttls(secure.pki.client_context())
        assert wire.command("EHLO client.test").code == 250
        assert_reply(wire.command(f"MAIL FROM:<{ALICE}>"), 250)
        assert_reply(wire.command(f"RCPT TO:<{REMOTE}>"), 554, "5.7.1")
        assert_reply(wire.command("RSET"), 250)
        assert_reply(wire.command(f"AUTH PLAIN {plain(ALICE, ALICE_PASSWORD)}"), 235)
        assert_reply(wire.command(f"MAIL FROM:<{ALICE}>"), 250)
        assert_reply(wire.command(f"RCPT TO:<{REMOTE}>"), 250)


# --- senders --------------------------------------------------------------------


def test_sender_must_belong_to_the_user(start_secure) -> None:
    secure = start_secure()
    with submission_over_tls(secure) as wire:
        assert_reply(wire.command(f"AUTH PLAIN {plain(ALICE, ALICE_PASSWORD)}"), 235)
        for sender in (BOB, "alice@remote.test", "ceo@example.org", ""):
            assert_reply(wire.command(f"MAIL FROM:<{sender}>"), 553, "5.7.1")
        # Her login, in any case, and the extra sender the users file gives her.
        for sender in (ALICE, ALICE.upper(), "postmaster@localhost"):
            assert_reply(wire.command(f"MAIL FROM:<{sender}>"), 250)
            assert_reply(wire.command("RSET"), 250)
        reply = send_message(wire, ALICE, BOB, small_message("owned sender", to=BOB))
        assert_reply(reply, 250, "2.0.0")
    assert len(secure.server.delivered("bob")) == 1


def test_any_sender_when_sender_must_match_is_off(start_secure) -> None:
    secure = start_secure(auth={"sender_must_match": False})
    with submission_over_tls(secure) as wire:
        assert_reply(wire.command(f"AUTH PLAIN {plain(BOB, BOB_PASSWORD)}"), 235)
        for sender in (ALICE, "ceo@example.org"):
            assert_reply(wire.command(f"MAIL FROM:<{sender}>"), 250)
            assert_reply(wire.command("RSET"), 250)


# --- guessing -------------------------------------------------------------------


def test_failed_logins_are_rate_limited_per_address(start_secure) -> None:
    # Two workers, a connection per guess: the guesses land on both, and the
    # count must hold for the server, not for each worker.
    secure = start_secure(
        workers=2,
        auth={
            "max_failures": 3,
            "failure_window_s": 60.0,
            "allow_plaintext_on_loopback": True,
        },
    )
    for attempt in range(3):
        with greeted(secure.host, secure.submission_port) as wire:
            reply = wire.command(f"AUTH PLAIN {plain(ALICE, f'guess {attempt}')}")
            assert_reply(reply, 535, "5.7.8")
    # The right password no longer helps from this address, on any worker.
    for _ in range(6):
        with greeted(secure.host, secure.submission_port) as wire:
            reply = wire.command(f"AUTH PLAIN {plain(ALICE, ALICE_PASSWORD)}")
            assert_reply(reply, 421, "4.7.0")
            assert wire.closed_by_peer()

    # Another address is not punished for it.
    with greeted(secure.host, secure.submission_port, source="127.0.0.2") as wire:
        assert_reply(wire.command(f"AUTH PLAIN {plain(ALICE, ALICE_PASSWORD)}"), 235)
        assert_reply(wire.command(f"MAIL FROM:<{ALICE}>"), 250)


# --- logs -----------------------------------------------------------------------


def secret_spellings(login: str, password: str) -> list[str]:
    """How a password can show up in a log: as is, and as it went on the wire."""
    return [password, b64(password), plain(login, password), repr(password)[1:-1]]


def assert_not_logged(secure: SecureServer, secrets: list[str]) -> None:
    log = secure.server.log()
    found = [secret for secret in secrets if secret in log]
    assert found == [], [
        line for line in log.splitlines() if any(s in line for s in found)
    ]


def test_credentials_never_reach_the_log(start_secure) -> None:
    users = {ALICE: (SECRET, ())}
    secure = start_secure(server={"log_level": "trace"}, users=users)
    wrong = SECRET[::-1]
    with submission_over_tls(secure) as wire:
        assert_reply(wire.command(f"AUTH PLAIN {plain(ALICE, wrong)}"), 535)
        assert wire.command("AUTH LOGIN").code == 334
        assert wire.command(b64(ALICE)).code == 334
        assert_reply(wire.command(b64(wrong)), 535)
        assert wire.command("AUTH PLAIN").code == 334
        assert_reply(wire.command(plain(ALICE, wrong)), 535)
        assert_reply(wire.command(f"AUTH PLAIN {plain(ALICE, SECRET)}"), 235)
    with submission_over_tls(secure) as wire:
        assert wire.command(f"AUTH LOGIN {b64(ALICE)}").code == 334
        assert_reply(wire.command(b64(SECRET)), 235)

    log = secure.server.log()
    assert "TRACE" in log and "AUTH" in log  # the trace was on and saw the AUTHs
    assert_not_logged(secure, secret_spellings(ALICE, SECRET))
    assert_not_logged(secure, secret_spellings(ALICE, wrong))


def test_refused_auth_commands_never_log_credentials(start_secure) -> None:
    # Refusals are logged whatever the level; an AUTH refused before its
    # credentials are checked still carries them.
    secure = start_secure(users={ALICE: (SECRET, ())})
    with greeted(secure.host, secure.submission_port) as wire:
        # Before TLS: 538, with the credentials already on the line.
        assert_reply(wire.command(f"AUTH PLAIN {plain(ALICE, SECRET)}"), 538)
    with submission_over_tls(secure) as wire:
        # A mechanism we do not have, whose initial response is a bearer token.
        assert_reply(wire.command(f"AUTH XOAUTH2 {xoauth2(ALICE, SECRET)}"), 504)
        # A PLAIN response that is base64 but not three fields.
        assert_reply(wire.command(f"AUTH PLAIN {b64(ALICE + chr(0) + SECRET)}"), 501)
        assert wire.command("AUTH PLAIN").code == 334
        assert_reply(wire.command(b64(SECRET)), 501)
        assert_reply(wire.command(f"AUTH PLAIN {plain(ALICE, SECRET)}"), 235)
        # Once logged in, AUTH again: refused, and its response with it.
        assert_reply(wire.command(f"AUTH PLAIN {plain(ALICE, SECRET)}"), 503)

    assert "NOQUEUE: reject: AUTH" in secure.server.log()  # refusals were logged
    assert_not_logged(secure, secret_spellings(ALICE, SECRET))
    assert_not_logged(secure, [b64(ALICE + chr(0) + SECRET), xoauth2(ALICE, SECRET)])
