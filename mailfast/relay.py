"""Delivering queued messages: attempts, retries, bounces, the queue runner.

Each worker runs one ``Relayer``. A message accepted by the worker is handed
over at once (``submit``) and attempted without delay; deferred messages
come back through the queue runner, which claims those that are due. One
attempt of one message:

1. group the recipients still pending by destination (their domain, or the
   smarthost), look up each destination's route, and hand each group to the
   SMTP client, all destinations at once;
2. log one line per recipient with the outcome;
3. failed recipients (and, once the message is older than the queue
   lifetime, deferred ones) go into one DSN to the sender, which is made
   durable before the recipients are marked done;
4. if anything is still deferred, save the progress and move the message to
   deferred/ with its next attempt time (exponential back-off); otherwise
   remove it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from concurrent.futures import Executor

from .bounce import FailedRecipient, build_dsn, read_original
from .config import Config, split_smarthost
from .delivery import Delivery
from .mailqueue import CorruptQueueFile, MailQueue, QueuedMessage
from .outcome import Outcome, Status

log = logging.getLogger("mailfast.relay")

RUNNER_TICK_S = 1.0  # how often the runner checks for a flush request
CACHE_REPORT_INTERVAL_S = 60.0
HEADER_SCAN_OCTETS = 65_536  # where Received: fields are counted for loops


class Relayer:
    def __init__(
        self,
        config: Config,
        queue: MailQueue,
        resolver,
        client,
        delivery: Delivery,
        executor: Executor,
    ):
        self.config = config
        self.queue = queue
        self.resolver = resolver
        self.client = client
        self.delivery = delivery
        self.executor = executor
        self.hostname = config.hostname
        self._active: set[asyncio.Task] = set()
        self._backlog: collections.deque[str] = collections.deque()
        self._smarthost = split_smarthost(config.relay.smarthost, config.relay.port)

    def submit(self, path: str) -> None:
        """Start delivering the message at ``path`` (in our active directory)."""
        if len(self._active) >= self.config.queue.max_active:
            self._backlog.append(path)
            return
        task = asyncio.get_running_loop().create_task(self._attempt_safely(path))
        self._active.add(task)
        task.add_done_callback(self._attempt_done)

    def _attempt_done(self, task: asyncio.Task) -> None:
        self._active.discard(task)
        while self._backlog and len(self._active) < self.config.queue.max_active:
            self.submit(self._backlog.popleft())

    async def _attempt_safely(self, path: str) -> None:
        try:
            await self._attempt(path)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The file stays in our active directory; the master gives it
            # back to deferred/ when this worker exits.
            log.exception("delivery attempt of %s failed unexpectedly", path)

    async def _run_blocking(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, function, *args
        )

    async def _attempt(self, path: str) -> None:
        try:
            message, hops = await self._run_blocking(self._load, path)
        except CorruptQueueFile as exc:
            # Left where it is, it would fail again after every restart; its
            # envelope cannot be trusted to deliver or bounce it either.
            log.error(
                "%s: corrupt queue file %s: %s; moving it to %s",
                os.path.basename(path),
                path,
                exc,
                self.queue.corrupt_dir,
            )
            await self._run_blocking(self.queue.quarantine, path)
            return
        pending = message.pending()
        if not pending:
            await self._run_blocking(self.queue.remove, message)
            return
        recipients = message.recipients()
        message.state.attempts += 1
        started = time.time()
        if hops > self.config.relay.max_received_headers:
            loop = Outcome.failed("5.4.6", "Too many Received headers: mail loop")
            outcomes = {index: loop for index in pending}
        else:
            outcomes = await self._deliver_pending(message, pending)

        expired = started - message.arrival > self.config.queue.max_lifetime_s
        failures, deferred = [], []
        for index in pending:
            outcome = outcomes[index]
            if outcome.status is Status.DEFERRED and expired:
                outcome = Outcome.failed(
                    "4.4.7",
                    f"Message expired in the queue; last error: {outcome.text}",
                    outcome.remote_host,
                )
            self._log_outcome(message, recipients[index].address, outcome, started)
            if outcome.status is Status.FAILED:
                failures.append(FailedRecipient(recipients[index], outcome))
                message.state.done.append(index)
            elif outcome.status is Status.DELIVERED:
                message.state.done.append(index)
            else:
                deferred.append(outcome)

        if failures:
            await self._bounce(message, failures)
        if deferred:
            delay = min(
                self.config.queue.min_backoff_s * 2 ** (message.state.attempts - 1),
                self.config.queue.max_backoff_s,
            )
            message.state.next_attempt = time.time() + delay
            last = deferred[-1]
            message.state.last_error = (
                last.remote_reply or f"{last.enhanced} {last.text}"
            )
            await self._run_blocking(self.queue.defer, message)
        else:
            await self._run_blocking(self.queue.remove, message)
            log.info("%s: removed", message.queue_id)

    async def _deliver_pending(
        self, message: QueuedMessage, pending: list[int]
    ) -> dict[int, Outcome]:
        recipients = message.recipients()
        groups: dict[str, list[int]] = {}
        for index in pending:
            destination = (
                self._smarthost[0] if self._smarthost else recipients[index].domain
            )
            groups.setdefault(destination, []).append(index)
        results = await asyncio.gather(
            *(
                self._deliver_group(message, destination, indices)
                for destination, indices in groups.items()
            )
        )
        outcomes: dict[int, Outcome] = {}
        for result in results:
            outcomes.update(result)
        return outcomes

    async def _deliver_group(
        self, message: QueuedMessage, destination: str, indices: list[int]
    ) -> dict[int, Outcome]:
        if self._smarthost:
            route = await self.resolver.route_smarthost(*self._smarthost)
        else:
            route = await self.resolver.route(destination)
        if route.outcome is not None:
            return {index: route.outcome for index in indices}
        policy = self.config.relay.tls_policy.get(destination, self.config.relay.tls)
        outcomes = await self.client.deliver(
            message.relay_message(indices),
            route.hosts,
            destination,
            tls_required=policy == "encrypt",
        )
        return dict(zip(indices, outcomes))

    def _load(self, path: str) -> tuple[QueuedMessage, int]:
        """The message and its Received count: one trip to the executor."""
        message = self.queue.load(path)
        return message, self._count_hops(message)

    def _count_hops(self, message: QueuedMessage) -> int:
        with open(message.path, "rb") as f:
            f.seek(message.content_offset)
            head = f.read(HEADER_SCAN_OCTETS)
        end = head.find(b"\r\n\r\n")
        header = head if end < 0 else head[:end]
        return sum(
            1 for line in header.split(b"\r\n") if line[:9].lower() == b"received:"
        )

    async def _bounce(
        self, message: QueuedMessage, failures: list[FailedRecipient]
    ) -> None:
        """Send one DSN for ``failures``; return once it is durable."""
        if not message.sender:
            log.info("%s: not bouncing a bounce (null sender)", message.queue_id)
            return
        wanted = [
            failure
            for failure in failures
            if not failure.recipient.notify or "FAILURE" in failure.recipient.notify
        ]
        if not wanted:
            return
        original, whole = await self._run_blocking(
            read_original,
            message.path,
            message.content_offset,
            message.content_size,
            message.envelope["ret"],
        )
        dsn = build_dsn(
            reporting_mta=self.hostname,
            queue_id=message.queue_id,
            sender=message.sender,
            arrival=message.arrival,
            envid=message.envelope["envid"],
            failures=wanted,
            original=original,
            original_is_whole=whole,
            now=time.time(),
        )
        body = "7BIT" if dsn.isascii() else "8BITMIME"
        bounce_id = await self.delivery.accept_generated(
            message.sender, dsn, body, smtputf8=not message.sender.isascii()
        )
        if bounce_id is None:
            log.warning(
                "%s: cannot return a bounce to <%s>: no such local mailbox",
                message.queue_id,
                message.sender,
            )
        else:
            log.info(
                "%s: sender non-delivery notification: %s", message.queue_id, bounce_id
            )

    def _log_outcome(
        self, message: QueuedMessage, address: str, outcome: Outcome, started: float
    ) -> None:
        reply = outcome.remote_reply or f"{outcome.enhanced} {outcome.text}"
        log.info(
            "%s: to=<%s> relay=%s delay=%.2fs attempt=%.2fs dsn=%s status=%s (%s)",
            message.queue_id,
            address,
            outcome.remote_host or "none",
            time.time() - message.arrival,
            time.time() - started,
            outcome.enhanced,
            outcome.status.value,
            reply,
        )

    # The queue runner.

    async def run(self) -> None:
        """Claim due deferred messages periodically, and at once on a flush."""
        last_scan = 0.0
        last_flush = self.queue.flush_requested_at()
        last_report = time.monotonic()
        while True:
            await asyncio.sleep(RUNNER_TICK_S)
            # The flush stamp first: a flush made after ``now`` was read would
            # leave its messages looking not yet due.
            flush = self.queue.flush_requested_at()
            now = time.time()
            if (
                flush != last_flush
                or now - last_scan >= self.config.queue.scan_interval_s
            ):
                last_flush, last_scan = flush, now
                room = (
                    self.config.queue.max_active
                    - len(self._active)
                    - len(self._backlog)
                )
                if room > 0:
                    for path in await self._run_blocking(
                        self.queue.claim_due, now, room
                    ):
                        self.submit(path)
            if time.monotonic() - last_report >= CACHE_REPORT_INTERVAL_S:
                last_report = time.monotonic()
                self._report_cache()

    def _report_cache(self) -> None:
        stats = self.resolver.stats
        lookups = stats.get("hits", 0) + stats.get("misses", 0)
        if lookups:
            log.info(
                "mx cache: hits=%d misses=%d queries=%d hit_rate=%.1f%%",
                stats.get("hits", 0),
                stats.get("misses", 0),
                stats.get("queries", 0),
                100.0 * stats.get("hits", 0) / lookups,
            )

    async def drain(self, timeout_s: float) -> None:
        """Give attempts in flight ``timeout_s`` to finish, then cancel them.

        A cancelled message stays in our active directory; the master moves
        it back to deferred/ once this worker has exited.
        """
        if self._active:
            await asyncio.wait(list(self._active), timeout=timeout_s)
        for task in list(self._active):
            task.cancel()
        self._backlog.clear()
        self._report_cache()
        await self.client.close()
