"""Connection limits that hold for the whole server, not for each worker.

Theory of operation
-------------------
Workers accept on shared sockets, so a client's connections land on any of
them, and each limit (``max_connections``, ``max_connections_per_ip``,
``max_connection_rate_per_ip``) needs counts that every worker can read. The
counts live in one anonymous shared mapping that the master creates before it
forks; children inherit it. There is no lock and no server process: every
counter has exactly one writer.

* **Slots.** The master gives each worker a slot (``allocate_slot``) before it
  forks it, and a worker writes only its own slot's counters. A check sums the
  counters of every slot. When the master has reaped a worker it zeroes the
  slot (``free_slot``) before handing it out again, so connections that a
  ``kill -9`` left counted are forgotten and nothing leaks. A reloading master
  runs two generations at once: each worker has its own slot, and each
  generation enforces its own limits over the counts of both.
* **Buckets.** An address is hashed to one of B buckets: an IPv4-mapped IPv6
  address counts as its IPv4 address, and another IPv6 address counts as its
  /64, since one host can use a whole /64. Each bucket has, for every slot,
  an open-connection count and two per-minute rate counts. A hash collision
  merges two addresses, so collisions only ever over-count. With k addresses
  known to the table, one address shares its bucket with another with a
  probability of about k/B: 1.5% at k = 1,000 and 14% at k = 10,000 for the
  default B = 65,536. This causes a refusal only when the addresses together
  reach a limit. The hash is keyed with a secret chosen per table, so a
  client cannot pick addresses (a /48 holds 65,536 /64s) that land in
  another client's bucket and use up its allowance.
* **Layout.** A bucket's counters for all slots sit side by side: open counts,
  then the even minute's rate counts, then the odd minute's (768 bytes for
  64 slots). A check therefore reads a few adjacent cache lines and sums
  each run with one ``sum()`` over a slice, instead of visiting 64 rows
  that each live on a page of their own. Slots are handed out lowest first,
  and the master publishes a high-water mark (one past the highest slot in
  use), so a check reads only that many counters. Free slots under the mark
  are zero and add nothing.
* **Rate.** Minutes are counted on ``time.monotonic``. On Linux that clock is
  the same in every process, and unlike wall time it does not jump when the
  clock is set, which would stretch or shorten a minute. Each slot counts the
  connections it admitted in the current minute and in the one before, in
  counters chosen by the minute's parity. The estimate is the current count
  plus the previous count scaled by the part of the previous minute that
  still lies within the last 60 seconds. Unlike a plain fixed window, this
  does not hand a client a fresh allowance at each minute boundary. Each slot
  records which minute its counts belong to. A worker that admits nothing
  for a while leaves counts from an older minute behind, and a check
  subtracts those, unless the worker calls ``tick`` every second or so and
  clears them itself. Only admitted connections count against the rate, so
  a client that is refused does not push its own refusals further out.

The table takes 4 × slots × (3 × buckets + 2) bytes plus a cache line:
48 MiB at 64 slots and 65,536 buckets, 3 MiB at 16 and 16,384. It becomes
resident as buckets are used, and all of it at the first ``free_slot``.
Measured with all three limits on (Python 3.11, a loaded 2-CPU machine),
``admit`` plus ``release`` cost 1.5 us with 2 slots in use, 1.7 us with 8
and 2.9 us with 64, about 1 us more for an address not seen before, and up
to 6 us with 64 when the other workers lag a minute behind and do not tick.

Reads are racy but bounded. A worker that checks while another is admitting
from the same bucket may miss that one connection. A worker has one check in
flight at a time, so a limit can be exceeded by at most one connection per
other worker admitting from the same address at that very instant. Each
counter is an aligned 32-bit word, written and read whole, so no count is
ever seen torn.
"""

from __future__ import annotations

import mmap
import os
import socket
import time
from collections.abc import Callable

# Why ``admit`` refused a connection.
TOTAL = "total"
PER_IP = "per-ip"
RATE = "rate"

RATE_WINDOW_S = 60
DEFAULT_SLOTS = 64  # two generations of up to 32 workers during a reload
DEFAULT_BUCKETS = 65_536

_WORD_OCTETS = 4  # every counter is an unsigned 32-bit word
_LINE_WORDS = 16  # a 64-byte cache line
_HIGH_WATER = 0  # the header's only word, written by the master
_FIRST_WINDOW = 2  # window numbers start here so that 0 means "never counted"
_BUCKET_CACHE_ENTRIES = 4096  # per worker: addresses whose bucket is remembered
_V4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"  # ::ffff:0:0/96, RFC 4291 §2.5.5.2


class ConnectionTableFullError(Exception):
    """Every slot of the connection table is taken by a live worker."""


class ConnectionTable:
    """The shared counters; created in the master before any fork.

    Only the master calls ``allocate_slot`` and ``free_slot``: which slots are
    in use is the master's private record, inherited by each child as it was
    at fork time.
    """

    def __init__(self, slots: int = DEFAULT_SLOTS, buckets: int = DEFAULT_BUCKETS):
        if slots < 1 or buckets < 1:
            raise ValueError("a connection table needs at least one slot and bucket")
        self.slots = slots
        self.buckets = buckets
        # Word offsets: the header has a cache line to itself, then come each
        # slot's open-connection total and the minute its rate counts belong
        # to, then the buckets, from a cache-line boundary.
        self.totals_at = _LINE_WORDS
        self.windows_at = self.totals_at + slots
        self.buckets_at = _round_up(self.windows_at + slots, _LINE_WORDS)
        self.bucket_words = 3 * slots  # open counts, even minute, odd minute
        words = self.buckets_at + buckets * self.bucket_words
        # MAP_SHARED and anonymous: inherited by forked children, never on
        # disk. Pages cost memory only once touched.
        self._memory = mmap.mmap(-1, words * _WORD_OCTETS)
        self.cells = memoryview(self._memory).cast("I")
        self._key = os.urandom(16)
        self._in_use: set[int] = set()
        self._zeros = memoryview(bytes(buckets * _WORD_OCTETS)).cast("I")

    @property
    def size_octets(self) -> int:
        return len(self._memory)

    def allocate_slot(self) -> int:
        """Master: the lowest free slot, for a worker about to be forked."""
        for slot in range(self.slots):
            if slot not in self._in_use:
                self._in_use.add(slot)
                self._publish_high_water()
                return slot
        raise ConnectionTableFullError(f"all {self.slots} connection slots are in use")

    def free_slot(self, slot: int) -> None:
        """Master: the slot's worker has been reaped; forget everything it counted.

        Call this only once ``waitpid`` has reported the worker gone: a slot
        has one writer, and zeroing it under a live worker would lose counts.
        Every bucket is written, so this makes the whole table resident
        (``size_octets``); at the defaults it took 6 to 16 ms.
        """
        cells = self.cells
        stride = self.bucket_words
        for part in range(3):
            start = self.buckets_at + part * self.slots + slot
            cells[start : start + self.buckets * stride : stride] = self._zeros
        cells[self.windows_at + slot] = 0
        cells[self.totals_at + slot] = 0
        self._in_use.discard(slot)
        self._publish_high_water()

    def bucket(self, client_ip: str) -> int:
        """The bucket that counts ``client_ip``, the same in every forked child."""
        # hash() of bytes is SipHash keyed per process, and children inherit
        # the key through fork; our own key makes it secret even when
        # PYTHONHASHSEED is fixed.
        return hash(self._key + _address_key(client_ip)) % self.buckets

    def connections(self, client_ip: str | None = None) -> int:
        """Open connections, server-wide or from ``client_ip``'s bucket."""
        if client_ip is None:
            start = self.totals_at
        else:
            start = self.buckets_at + self.bucket(client_ip) * self.bucket_words
        return sum(self.cells[start : start + self.slots])

    def _publish_high_water(self) -> None:
        self.cells[_HIGH_WATER] = max(self._in_use) + 1 if self._in_use else 0


class ConnectionLimiter:
    """One worker's view of the table: admits and releases its connections.

    Create it in the worker after fork, with the slot the master gave that
    worker, and use it from the worker's event loop only. A limit of 0 means
    unlimited; connections are counted all the same, so that a generation
    with a limit sees the connections of one without. Not thread-safe.
    """

    def __init__(
        self,
        table: ConnectionTable,
        slot: int,
        max_connections: int,
        max_per_ip: int,
        max_rate_per_ip_per_minute: int,
        clock: Callable[[], float] = time.monotonic,
    ):
        if slot not in table._in_use:
            raise ValueError(f"connection slot {slot} was not allocated")
        self.table = table
        self.slot = slot
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.max_rate_per_ip_per_minute = max_rate_per_ip_per_minute
        self._clock = clock
        self._cells = table.cells
        self._totals_at = table.totals_at
        self._windows_at = table.windows_at
        self._own_total = table.totals_at + slot
        self._own_window = table.windows_at + slot
        self._rate_at = (table.slots, 2 * table.slots)  # by the minute's parity
        self._window = self._cells[self._own_window]
        # Buckets this slot counted in the even and the odd minute, to zero
        # when that parity comes round again.
        self._touched: tuple[set[int], set[int]] = (set(), set())
        # Slots whose rate counts were older than the current minute at the
        # last scan; rescanned when the minute or the high-water mark moves.
        self._lagging: list[int] = []
        self._scanned = (-1, -1)
        self._bucket_at: dict[str, int] = {}

    def tick(self) -> None:
        """Move this slot on to the current minute even while it admits nothing.

        Optional; call it about once a second from the worker's loop (the
        heartbeat will do). Checks stay right without it, but each check in
        every worker must then correct for the counts of a slot that has
        fallen behind, which costs about 0.1 microsecond per such slot.
        """
        window = int(self._clock() // RATE_WINDOW_S) + _FIRST_WINDOW
        if window != self._window:
            self._roll(window)

    def admit(self, client_ip: str, per_ip_limits: bool = True) -> str | None:
        """Count a new connection, or say why not: None, TOTAL, PER_IP or RATE.

        A connection that is refused is not counted: do not ``release`` it.
        Without ``per_ip_limits`` (an exempt client) only the total applies;
        the connection is counted all the same.
        """
        at = self._bucket_at.get(client_ip)
        if at is None:
            at = self._locate(client_ip)
        cells = self._cells
        high_water = cells[_HIGH_WATER]

        limit = self.max_connections
        if limit:
            totals = self._totals_at
            if sum(cells[totals : totals + high_water]) >= limit:
                return TOTAL
        limit = self.max_per_ip if per_ip_limits else 0
        if limit and sum(cells[at : at + high_water]) >= limit:
            return PER_IP

        now = self._clock()
        window = int(now // RATE_WINDOW_S) + _FIRST_WINDOW
        if window != self._window:
            self._roll(window)
        limit = self.max_rate_per_ip_per_minute if per_ip_limits else 0
        if limit and self._estimate(at, window, now, high_water) + 1 > limit:
            return RATE

        own = at + self.slot
        cells[own] += 1
        cells[self._own_total] += 1
        own = at + self._rate_at[window & 1] + self.slot
        cells[own] += 1
        self._touched[window & 1].add(at)
        return None

    def release(self, client_ip: str) -> None:
        """An admitted connection has closed."""
        at = self._bucket_at.get(client_ip)
        if at is None:
            at = self._locate(client_ip)
        cells = self._cells
        # Never below zero: an unsigned counter would wrap and refuse everyone.
        own = at + self.slot
        count = cells[own]
        if count:
            cells[own] = count - 1
        count = cells[self._own_total]
        if count:
            cells[self._own_total] = count - 1

    def _locate(self, client_ip: str) -> int:
        """The word offset of ``client_ip``'s bucket, remembered for next time."""
        table = self.table
        at = table.buckets_at + table.bucket(client_ip) * table.bucket_words
        if len(self._bucket_at) >= _BUCKET_CACHE_ENTRIES:
            self._bucket_at.clear()
        self._bucket_at[client_ip] = at
        return at

    def _roll(self, window: int) -> None:
        """Move this slot's rate counts on to minute ``window``."""
        cells = self._cells
        if self._window == window - 1:
            stale = (window & 1,)  # the other parity now holds the previous minute
        else:
            stale = (0, 1)  # idle for a minute or more: nothing is recent
        for parity in stale:
            offset = self._rate_at[parity] + self.slot
            touched = self._touched[parity]
            for at in touched:
                cells[at + offset] = 0
            touched.clear()
        # Only now: a reader trusts the counts of a slot that is on its minute.
        cells[self._own_window] = window
        self._window = window

    def _estimate(self, at: int, window: int, now: float, high_water: int) -> float:
        """Connections admitted from the bucket at ``at`` in the last minute."""
        cells = self._cells
        current = at + self._rate_at[window & 1]
        previous = at + self._rate_at[(window - 1) & 1]
        this_minute = sum(cells[current : current + high_water])
        last_minute = sum(cells[previous : previous + high_water])

        # Take out what slots that have not reached this minute counted in
        # older ones. Within a minute, a slot can only catch up or be zeroed.
        if self._scanned != (window, high_water):
            self._scan(window, high_water)
        windows_at = self._windows_at
        for slot in self._lagging:
            slot_window = cells[windows_at + slot]
            if slot_window >= window:
                self._scanned = (-1, -1)  # caught up: leave it out from now on
                continue
            this_minute -= cells[current + slot]
            if slot_window < window - 1:
                last_minute -= cells[previous + slot]

        elapsed = (now % RATE_WINDOW_S) / RATE_WINDOW_S
        return this_minute + last_minute * (1.0 - elapsed)

    def _scan(self, window: int, high_water: int) -> None:
        """Find the slots behind ``window``; one that never counted has only zeros."""
        cells = self._cells
        windows_at = self._windows_at
        self._lagging = [
            slot for slot in range(high_water) if 0 < cells[windows_at + slot] < window
        ]
        self._scanned = (window, high_water)


def _address_key(client_ip: str) -> bytes:
    """What identifies a client: its IPv4 address or its IPv6 /64."""
    try:
        if ":" not in client_ip:
            return socket.inet_pton(socket.AF_INET, client_ip)
        packed = socket.inet_pton(socket.AF_INET6, client_ip.partition("%")[0])
    except (OSError, ValueError):
        # Not an address (no peer name, a Unix socket): all such share a key.
        return b"?" + client_ip.encode("utf-8", "surrogateescape")
    if packed[:12] == _V4_MAPPED_PREFIX:
        return packed[12:]
    return packed[:8]


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
