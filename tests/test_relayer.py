"""The Relayer: attempts, retries, bounces, with a fake resolver and client.

The queue files, the state files, the group committer and the Delivery that
writes bounces into alice's Maildir are all real; only the network is faked.
``FakeResolver`` routes every domain to one MX host unless a test sets a
route, and ``FakeClient`` answers each recipient from a table (250 unless
told otherwise) and records every call. Most tests run one attempt by
awaiting the Relayer's attempt method, so an exception in it fails the test
instead of being logged; the last tests go through ``submit`` and the queue
runner as a worker does.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailfast import relay
from mailfast.addresses import parse_mailbox
from mailfast.config import Config, parse
from mailfast.delivery import Delivery
from mailfast.directory import Directory
from mailfast.envelope import Envelope, Recipient
from mailfast.groupcommit import FileJob, GroupCommitter
from mailfast.ids import new_queue_id
from mailfast.maildir import MaildirStore
from mailfast.mailqueue import DeliveryState, MailQueue, envelope_line
from mailfast.mx import Route
from mailfast.outcome import Outcome
from mailfast.relay import Relayer
from mailfast.relaymodel import MXHost, RelayMessage
from mailfast.spool import MessageBuffer

MIN_BACKOFF_S = 300
MAX_BACKOFF_S = 1000
MAX_LIFETIME_S = 86400
CONFIG_TEXT = f"""
[server]
hostname = "mx.test"

[queue]
min_backoff_s = {MIN_BACKOFF_S}
max_backoff_s = {MAX_BACKOFF_S}
max_lifetime_s = {MAX_LIFETIME_S}

[relay]
{{relay}}

[domains.localhost]
mailboxes = ["alice"]
"""
CONTENT = (
    b"From: Alice <alice@localhost>\r\n"
    b"To: Bob <bob@example.com>\r\n"
    b"Subject: plans\r\n"
    b"\r\n"
    b"See you on Friday.\r\n"
)
ALICE = "alice@localhost"
BOB = "bob@example.com"
CAROL = "carol@example.com"
DAVE = "dave@example.org"
MX_COM = "mx.example.com[192.0.2.25]:25"
REFUSED = Outcome.from_reply(550, "5.1.1", "<carol@example.com>: no such user", MX_COM)
BUSY = Outcome.from_reply(451, "4.3.0", "try again later", MX_COM)


class FakeResolver:
    """Every domain is served by mx.<domain>, unless ``routes`` says otherwise."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.domains: list[str] = []  # asked with route()
        self.smarthosts: list[tuple[str, int]] = []  # asked with route_smarthost()
        self.stats = {"hits": 0, "misses": 0, "queries": 0}

    async def route(self, domain: str) -> Route:
        self.domains.append(domain)
        if domain in self.routes:
            return self.routes[domain]
        return Route([MXHost(f"mx.{domain}", 10, ("192.0.2.25",))], None)

    async def route_smarthost(self, host: str, port: int) -> Route:
        self.smarthosts.append((host, port))
        return Route([MXHost(host, 0, ("192.0.2.99",))], None)


@dataclass
class Call:
    """One call of FakeClient.deliver, with the content it would have sent."""

    message: RelayMessage
    hosts: list[MXHost]
    destination: str
    tls_required: bool
    content: bytes

    @property
    def recipients(self) -> list[str]:
        return [recipient.address for recipient in self.message.recipients]


def read_content(message: RelayMessage) -> bytes:
    """What a client would send of ``message``: its part of the queue file."""
    with open(message.content_path, "rb") as f:
        f.seek(message.content_offset)
        return f.read(message.content_size)


class FakeClient:
    def __init__(self) -> None:
        self.outcomes: dict[str, Outcome] = {}  # by address; else 250 from hosts[0]
        self.calls: list[Call] = []
        self.closed = 0

    async def deliver(
        self,
        message: RelayMessage,
        hosts: list[MXHost],
        destination: str,
        tls_required: bool,
    ) -> list[Outcome]:
        content = await asyncio.to_thread(read_content, message)
        self.calls.append(Call(message, hosts, destination, tls_required, content))
        accepted = Outcome.from_reply(
            250, "2.0.0", "queued", f"{hosts[0].name}[{hosts[0].addresses[0]}]:25"
        )
        return [self.outcomes.get(r.address, accepted) for r in message.recipients]

    async def close(self) -> None:
        self.closed += 1


@dataclass
class Site:
    config: Config
    queue: MailQueue
    committer: GroupCommitter
    delivery: Delivery
    resolver: FakeResolver
    client: FakeClient
    relayer: Relayer
    mail_root: Path
    queued: list[str] = field(default_factory=list)  # what on_queued was given

    @property
    def active(self) -> list[str]:
        return os.listdir(self.queue.active_dir())

    @property
    def deferred(self) -> list[str]:
        return os.listdir(self.queue.deferred_dir)

    @property
    def states(self) -> list[str]:
        return os.listdir(self.queue.state_dir)

    def bounces(self) -> list[EmailMessage]:
        """The messages in alice's Maildir, parsed."""
        new = self.mail_root / "localhost" / "alice" / "new"
        if not new.exists():
            return []
        return [
            email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            for path in sorted(new.iterdir())
        ]


@pytest.fixture
def build(tmp_path: Path) -> Iterator[Callable[..., Site]]:
    """Make a Site; ``relay`` is extra TOML for the [relay] section."""
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit") as commit,
        ThreadPoolExecutor(max_workers=4, thread_name_prefix="queue") as blocking,
    ):

        def build(relay: str = "") -> Site:
            config = parse(CONFIG_TEXT.format(relay=relay))
            queue = MailQueue(str(tmp_path / "queue"))
            queue.prepare_worker()
            committer = GroupCommitter(commit, "fsync")
            delivery = Delivery(
                config.hostname,
                Directory(config),
                MaildirStore(str(tmp_path / "mail")),
                queue,
                committer,
                str(tmp_path / "spool"),
            )
            resolver, client = FakeResolver(), FakeClient()
            relayer = Relayer(config, queue, resolver, client, delivery, blocking)
            site = Site(
                config,
                queue,
                committer,
                delivery,
                resolver,
                client,
                relayer,
                tmp_path / "mail",
            )
            delivery.on_queued = site.queued.append
            return site

        yield build


@pytest.fixture
def site(build: Callable[..., Site]) -> Site:
    return build()


def enqueue(
    site: Site,
    *recipients: str | Recipient,
    sender: str = ALICE,
    content: bytes = CONTENT,
) -> str:
    """Accept ``content`` for remote ``recipients``; the path of its queue file."""
    reverse_path = parse_mailbox(sender.encode(), utf8=True) if sender else None
    envelope = Envelope("192.0.2.7", "client.example", "ESMTP", reverse_path)
    for recipient in recipients:
        if isinstance(recipient, str):
            recipient = Recipient(parse_mailbox(recipient.encode(), utf8=True), ())
        envelope.recipients.append(recipient)
    message = MessageBuffer(str(site.mail_root.parent / "spool"), 1 << 20)
    message.write(content)
    try:
        asyncio.run(site.delivery.accept(envelope, message, new_queue_id()))
    finally:
        message.discard()
    return site.queued[-1]


def enqueue_arrived(site: Site, arrival: float, *addresses: str) -> str:
    """A queue file from alice that arrived at ``arrival``; its path."""
    queue_id = new_queue_id()
    recipients = [{"address": a, "notify": [], "orcpt": ""} for a in addresses]
    line = envelope_line(queue_id, ALICE, recipients, arrival)
    pending = site.queue.pending_generated(queue_id, line, CONTENT)
    asyncio.run(site.committer.commit(FileJob(files=[pending])))
    return pending.final_path


def attempt(site: Site, path: str) -> None:
    asyncio.run(site.relayer._attempt(path))


def retry(site: Site, queue_id: str) -> None:
    """Claim the deferred message as the queue runner would, and attempt it."""
    [path] = site.queue.claim_due(time.time() + 10 * MAX_BACKOFF_S, limit=10)
    assert os.path.basename(path) == queue_id
    attempt(site, path)


def state_of(site: Site, queue_id: str) -> DeliveryState:
    with open(os.path.join(site.queue.state_dir, queue_id), "rb") as f:
        return DeliveryState.from_json(f.read())


def recipient_fields(report: EmailMessage) -> list[EmailMessage]:
    status = report.get_payload()[1]
    assert status.get_content_type() == "message/delivery-status"
    return status.get_payload()[1:]


# One attempt.


def test_all_delivered_removes_the_message_and_its_state(site: Site) -> None:
    path = enqueue(site, BOB, DAVE, CAROL)
    queued = Path(path).read_bytes()

    attempt(site, path)

    assert (site.active, site.deferred, site.states) == ([], [], [])
    assert site.bounces() == []
    by_destination = {call.destination: call for call in site.client.calls}
    assert sorted(by_destination) == ["example.com", "example.org"]
    assert by_destination["example.com"].recipients == [BOB, CAROL]
    assert by_destination["example.org"].recipients == [DAVE]
    com = by_destination["example.com"]
    assert [host.name for host in com.hosts] == ["mx.example.com"]
    assert com.tls_required is False
    assert com.message.sender == ALICE
    assert queued.endswith(com.content) and com.content.endswith(CONTENT)
    assert com.content.startswith(b"Received: from client.example ([192.0.2.7])")


def test_failed_recipient_is_bounced_to_the_sender_and_the_message_removed(
    site: Site,
) -> None:
    site.client.outcomes[CAROL] = REFUSED
    path = enqueue(site, BOB, CAROL)
    queue_id = os.path.basename(path)

    attempt(site, path)

    assert (site.active, site.deferred, site.states) == ([], [], [])
    [bounce] = site.bounces()
    assert bounce["Return-Path"] == "<>"
    assert bounce["Delivered-To"] == ALICE
    assert bounce["To"].addresses[0].addr_spec == ALICE
    assert bounce.get_content_type() == "multipart/report"
    [carol] = recipient_fields(bounce)
    assert carol["Final-Recipient"] == f"rfc822; {CAROL}"
    assert carol["Action"] == "failed"
    assert carol["Status"] == "5.1.1"
    assert carol["Diagnostic-Code"] == f"smtp; 550 5.1.1 <{CAROL}>: no such user"
    assert BOB not in bounce.get_payload()[0].get_content()
    assert bounce.get_payload()[1].get_payload()[0]["X-Mailfast-Queue-ID"] == queue_id


def test_deferred_recipient_waits_in_deferred_until_its_next_attempt(
    site: Site,
) -> None:
    site.client.outcomes[BOB] = BUSY
    path = enqueue(site, BOB)
    queue_id = os.path.basename(path)

    before = time.time()
    attempt(site, path)
    after = time.time()

    assert (site.active, site.deferred) == ([], [queue_id])
    state = state_of(site, queue_id)
    assert state.attempts == 1
    assert before + MIN_BACKOFF_S <= state.next_attempt <= after + MIN_BACKOFF_S
    assert state.last_error == "451 4.3.0 try again later"
    assert state.done == []
    mtime = os.stat(os.path.join(site.queue.deferred_dir, queue_id)).st_mtime
    assert mtime == pytest.approx(state.next_attempt, abs=1e-3)
    assert site.queue.claim_due(time.time(), limit=10) == []  # not due yet
    assert site.bounces() == []


def test_back_off_doubles_per_attempt_up_to_the_maximum(site: Site) -> None:
    site.client.outcomes[BOB] = BUSY
    path = enqueue(site, BOB)
    queue_id = os.path.basename(path)
    delays = []

    attempt(site, path)
    for _ in range(4):
        delays.append(state_of(site, queue_id).next_attempt - time.time())
        retry(site, queue_id)
    delays.append(state_of(site, queue_id).next_attempt - time.time())

    assert delays == pytest.approx([300, 600, 1000, 1000, 1000], abs=5)
    assert state_of(site, queue_id).attempts == 5
    assert len(site.client.calls) == 5


def test_recipients_already_done_are_not_sent_again(site: Site) -> None:
    site.client.outcomes[CAROL] = BUSY
    path = enqueue(site, BOB, CAROL, DAVE)
    queue_id = os.path.basename(path)

    attempt(site, path)
    assert sorted(state_of(site, queue_id).done) == [0, 2]
    del site.client.outcomes[CAROL]
    site.client.calls.clear()
    retry(site, queue_id)

    assert [call.recipients for call in site.client.calls] == [[CAROL]]
    assert (site.active, site.deferred, site.states) == ([], [], [])
    assert site.bounces() == []


def test_deferral_after_the_queue_lifetime_is_bounced_as_expired(
    site: Site,
) -> None:
    site.client.outcomes[BOB] = BUSY
    path = enqueue_arrived(site, time.time() - MAX_LIFETIME_S - 60, BOB, DAVE)

    attempt(site, path)

    assert (site.active, site.deferred, site.states) == ([], [], [])
    [bounce] = site.bounces()
    [bob] = recipient_fields(bounce)
    assert bob["Final-Recipient"] == f"rfc822; {BOB}"
    assert bob["Action"] == "failed"
    assert bob["Status"] == "4.4.7"
    assert bob["Remote-MTA"] == "dns; mx.example.com"
    assert bob["Diagnostic-Code"].startswith("x-mailfast; ")
    assert "try again later" in bob["Diagnostic-Code"]


def test_deferral_within_the_queue_lifetime_is_kept(site: Site) -> None:
    site.client.outcomes[BOB] = BUSY
    path = enqueue_arrived(site, time.time() - MAX_LIFETIME_S + 600, BOB)

    attempt(site, path)

    assert site.deferred == [os.path.basename(path)]
    assert site.bounces() == []


def test_failure_of_a_message_from_the_null_sender_is_not_bounced(
    site: Site,
) -> None:
    site.client.outcomes[CAROL] = REFUSED
    path = enqueue(site, CAROL, sender="")

    attempt(site, path)

    assert (site.active, site.deferred, site.states) == ([], [], [])
    assert site.bounces() == []
    assert site.queued == [path]  # and nothing queued to anyone else


@pytest.mark.parametrize(
    ("notify", "bounces"),
    [
        (("NEVER",), 0),
        (("SUCCESS", "DELAY"), 0),
        (("FAILURE",), 1),
        (("SUCCESS", "FAILURE"), 1),
        ((), 1),  # no NOTIFY: failures are reported
    ],
)
def test_notify_decides_whether_a_failure_is_reported(
    site: Site, notify: tuple[str, ...], bounces: int
) -> None:
    site.client.outcomes[CAROL] = REFUSED
    carol = Recipient(parse_mailbox(CAROL.encode(), utf8=False), (), notify=notify)
    path = enqueue(site, carol)

    attempt(site, path)

    assert (site.active, site.deferred, site.states) == ([], [], [])
    assert len(site.bounces()) == bounces


def test_original_recipient_of_a_bounce_comes_from_orcpt(site: Site) -> None:
    site.client.outcomes[CAROL] = REFUSED
    mailbox = parse_mailbox(CAROL.encode(), utf8=False)
    orcpt = "rfc822;carol+2Blists@example.net"
    path = enqueue(site, Recipient(mailbox, (), ("FAILURE",), orcpt))

    attempt(site, path)

    [carol] = recipient_fields(site.bounces()[0])
    assert carol["Original-Recipient"] == "rfc822; carol+lists@example.net"
    assert carol["Final-Recipient"] == f"rfc822; {CAROL}"


def test_bounce_to_a_remote_sender_is_queued_from_the_null_sender(
    site: Site,
) -> None:
    site.client.outcomes[CAROL] = REFUSED
    path = enqueue(site, CAROL, sender="erin@example.net")

    attempt(site, path)

    assert site.bounces() == []
    [original, bounce_path] = site.queued
    assert original == path
    bounce = site.queue.load(bounce_path)
    assert bounce.sender == ""
    assert [r.address for r in bounce.recipients()] == ["erin@example.net"]

    # A bounce that fails in turn is dropped, never bounced again.
    site.client.outcomes["erin@example.net"] = Outcome.from_reply(
        550, "5.1.1", "no such user", "mx.example.net[192.0.2.25]:25"
    )
    attempt(site, bounce_path)
    assert site.queued == [original, bounce_path]
    assert (site.active, site.deferred, site.states) == ([], [], [])


def test_mail_loop_fails_every_recipient_without_a_delivery_attempt(
    site: Site,
) -> None:
    trace = b"".join(
        b"Received: from hop%d.example by hop%d.example; Fri, 1 Dec 2023 10:00:00"
        b" +0000\r\n" % (hop, hop + 1)
        for hop in range(60)
    )
    path = enqueue(site, BOB, DAVE, content=trace + CONTENT)

    attempt(site, path)

    assert site.client.calls == []
    assert site.resolver.domains == []
    assert (site.active, site.deferred, site.states) == ([], [], [])
    [bounce] = site.bounces()
    blocks = recipient_fields(bounce)
    assert [block["Final-Recipient"] for block in blocks] == [
        f"rfc822; {BOB}",
        f"rfc822; {DAVE}",
    ]
    assert {block["Status"] for block in blocks} == {"5.4.6"}
    assert bounce.get_payload()[2].get_content_type() == "message/rfc822"


def test_received_lines_below_the_header_are_not_hops(site: Site) -> None:
    quoted = b"".join(b"Received: from hop%d.example\r\n" % hop for hop in range(60))
    path = enqueue(site, BOB, content=CONTENT + b"\r\n" + quoted)

    attempt(site, path)

    assert [call.recipients for call in site.client.calls] == [[BOB]]
    assert site.bounces() == []


@pytest.mark.parametrize(
    ("smarthost", "destination", "port"),
    [
        ("relay.example.net:587", "relay.example.net", 587),
        ("[192.0.2.99]", "[192.0.2.99]", 25),
    ],
)
def test_smarthost_takes_every_recipient_in_one_call(
    build: Callable[..., Site], smarthost: str, destination: str, port: int
) -> None:
    site = build(relay=f'smarthost = "{smarthost}"')
    path = enqueue(site, BOB, DAVE, "erin@example.net")

    attempt(site, path)

    [call] = site.client.calls
    assert call.destination == destination
    assert call.recipients == [BOB, DAVE, "erin@example.net"]
    assert [host.name for host in call.hosts] == [destination]
    assert site.resolver.smarthosts == [(destination, port)]
    assert site.resolver.domains == []
    assert (site.active, site.deferred, site.states) == ([], [], [])


def test_tls_policy_of_the_destination_decides_whether_tls_is_required(
    build: Callable[..., Site],
) -> None:
    site = build(relay='tls_policy = { "example.com" = "encrypt" }')

    attempt(site, enqueue(site, BOB, DAVE))

    required = {call.destination: call.tls_required for call in site.client.calls}
    assert required == {"example.com": True, "example.org": False}


def test_failed_route_fails_every_recipient_of_the_domain_without_the_client(
    site: Site,
) -> None:
    null_mx = Outcome.failed("5.1.10", "domain example.com accepts no mail (null MX)")
    site.resolver.routes["example.com"] = Route([], null_mx)
    path = enqueue(site, BOB, DAVE, CAROL)

    attempt(site, path)

    assert [call.destination for call in site.client.calls] == ["example.org"]
    assert (site.active, site.deferred, site.states) == ([], [], [])
    [bounce] = site.bounces()
    blocks = recipient_fields(bounce)
    assert [block["Final-Recipient"] for block in blocks] == [
        f"rfc822; {BOB}",
        f"rfc822; {CAROL}",
    ]
    for block in blocks:
        assert block["Status"] == "5.1.10"
        assert "Remote-MTA" not in block
        assert block["Diagnostic-Code"] == (
            "x-mailfast; domain example.com accepts no mail (null MX)"
        )


def test_deferred_route_defers_every_recipient_of_the_domain(site: Site) -> None:
    dns_failure = Outcome.deferred(
        "4.4.3", "DNS temporary failure looking up example.com MX"
    )
    site.resolver.routes["example.com"] = Route([], dns_failure)
    path = enqueue(site, BOB, CAROL)
    queue_id = os.path.basename(path)

    attempt(site, path)

    assert site.client.calls == []
    assert site.deferred == [queue_id]
    state = state_of(site, queue_id)
    assert state.done == []
    assert state.last_error == "4.4.3 DNS temporary failure looking up example.com MX"


def test_message_whose_recipients_are_all_done_is_removed_without_an_attempt(
    site: Site,
) -> None:
    # A crash after the last state save but before the unlink leaves this.
    path = enqueue(site, BOB, DAVE)
    message = site.queue.load(path)
    message.state = DeliveryState(attempts=1, done=[1, 0])
    site.queue.save_state(message)

    attempt(site, path)

    assert site.client.calls == []
    assert (site.active, site.deferred, site.states) == ([], [], [])
    assert site.bounces() == []


# As a worker drives it.


@pytest.fixture
def errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail the test if an attempt raised: submit() only logs it."""
    with caplog.at_level(logging.ERROR, logger="mailfast"):
        yield
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_accepted_message_is_submitted_and_delivered_at_once(
    site: Site, errors: None
) -> None:
    envelope = Envelope(
        "192.0.2.7", "client.example", "ESMTP", parse_mailbox(ALICE.encode(), False)
    )
    envelope.recipients.append(Recipient(parse_mailbox(BOB.encode(), False), ()))
    message = MessageBuffer(str(site.mail_root.parent / "spool"), 1 << 20)
    message.write(CONTENT)
    site.delivery.on_queued = site.relayer.submit

    async def accept_and_drain() -> None:
        await site.delivery.accept(envelope, message, new_queue_id())
        await site.relayer.drain(timeout_s=5.0)

    try:
        asyncio.run(accept_and_drain())
    finally:
        message.discard()

    assert [call.recipients for call in site.client.calls] == [[BOB]]
    assert site.client.closed == 1
    assert (site.active, site.deferred, site.states) == ([], [], [])


def test_queue_runner_claims_a_deferred_message_when_a_flush_is_requested(
    site: Site, errors: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay, "RUNNER_TICK_S", 0.01)
    site.client.outcomes[BOB] = BUSY
    path = enqueue(site, BOB)
    attempt(site, path)
    del site.client.outcomes[BOB]

    async def flush_and_wait() -> list[str]:
        runner = asyncio.get_running_loop().create_task(site.relayer.run())
        await asyncio.sleep(0.2)  # many ticks: the message is not due
        waiting = site.deferred
        site.queue.request_flush()
        deadline = time.monotonic() + 5.0
        while (site.deferred or site.active) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        runner.cancel()
        await site.relayer.drain(timeout_s=5.0)
        return waiting

    assert asyncio.run(flush_and_wait()) == [os.path.basename(path)]
    assert [call.recipients for call in site.client.calls] == [[BOB], [BOB]]
    assert (site.active, site.deferred, site.states) == ([], [], [])


# Corrupt queue files: set aside in corrupt/, never delivered nor bounced.


def corrupt_file(queue_id: str, case: str) -> bytes:
    """A queue file for ``queue_id`` damaged as ``case`` says."""
    good = envelope_line(
        queue_id, ALICE, [{"address": BOB, "notify": [], "orcpt": ""}], time.time()
    )
    record = json.loads(good)
    if case == "no recipients":
        del record["recipients"]
        return json.dumps(record).encode() + b"\n" + CONTENT
    return {
        "no id": b'{"v":1}\n' + CONTENT,
        "json array": b"[1]\n" + CONTENT,
        "invalid json": good[:-20] + b"\n" + CONTENT,
        "truncated": good[:30],
    }[case]


CORRUPT_CASES = ["no id", "json array", "invalid json", "truncated", "no recipients"]


@pytest.mark.parametrize("case", CORRUPT_CASES)
def test_corrupt_queue_file_is_moved_to_corrupt_with_an_error_naming_it(
    site: Site, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    queue_id = new_queue_id()
    path = os.path.join(site.queue.active_dir(), queue_id)
    with open(path, "wb") as f:
        f.write(corrupt_file(queue_id, case))

    with caplog.at_level(logging.ERROR, logger="mailfast"):
        attempt(site, path)

    assert site.client.calls == []
    assert site.bounces() == []
    assert (site.active, site.deferred, site.states) == ([], [], [])
    assert os.listdir(site.queue.corrupt_dir) == [queue_id]
    [error] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert error.getMessage().startswith(f"{queue_id}: corrupt queue file {path}: ")
    assert error.exc_info is None  # a reason, not a traceback


def test_message_with_a_corrupt_state_file_is_moved_with_it(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    path = enqueue(site, BOB)
    queue_id = os.path.basename(path)
    with open(os.path.join(site.queue.state_dir, queue_id), "wb") as f:
        f.write(b'{"attempts": 2}')  # which recipients are done is lost

    with caplog.at_level(logging.ERROR, logger="mailfast"):
        attempt(site, path)

    assert site.client.calls == []
    assert site.bounces() == []
    assert (site.active, site.deferred, site.states) == ([], [], [])
    assert sorted(os.listdir(site.queue.corrupt_dir)) == [
        queue_id,
        queue_id + ".state",
    ]
    assert "state file has no 'next_attempt'" in caplog.text


def test_worker_goes_on_past_a_corrupt_file_and_does_not_see_it_again(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    broken = os.path.join(site.queue.active_dir(), "BROKEN")
    with open(broken, "wb") as f:
        f.write(b'{"v":1}\n' + CONTENT)
    good = enqueue(site, BOB)

    async def submit_and_drain() -> None:
        site.relayer.submit(broken)
        site.relayer.submit(good)
        await site.relayer.drain(timeout_s=5.0)

    with caplog.at_level(logging.ERROR, logger="mailfast"):
        asyncio.run(submit_and_drain())

    assert [call.recipients for call in site.client.calls] == [[BOB]]
    assert (site.active, site.deferred, site.states) == ([], [], [])
    assert os.listdir(site.queue.corrupt_dir) == ["BROKEN"]
    assert [r.getMessage()[:7] for r in caplog.records] == ["BROKEN:"]
    # A restart gives the workers' files back to deferred/: none is left.
    assert MailQueue(site.queue.directory).recover() == 0


def test_queue_runner_goes_on_past_a_directory_in_deferred(
    site: Site, errors: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay, "RUNNER_TICK_S", 0.01)
    site.client.outcomes[BOB] = BUSY
    path = enqueue(site, BOB)
    attempt(site, path)
    del site.client.outcomes[BOB]
    os.mkdir(os.path.join(site.queue.deferred_dir, "STRAY"))

    async def flush_and_wait() -> None:
        runner = asyncio.get_running_loop().create_task(site.relayer.run())
        site.queue.request_flush()
        deadline = time.monotonic() + 5.0
        while (site.deferred or site.active) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert not runner.done()
        runner.cancel()
        await site.relayer.drain(timeout_s=5.0)

    asyncio.run(flush_and_wait())

    assert [call.recipients for call in site.client.calls] == [[BOB], [BOB]]
    assert (site.active, site.deferred, site.states) == ([], [], [])
    assert os.listdir(site.queue.corrupt_dir) == ["STRAY"]
