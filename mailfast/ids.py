"""Names that must be unique: queue ids and Maildir file names."""

from __future__ import annotations

import itertools
import os
import socket
import time

_counter = itertools.count()
_HOST = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXYZ"  # no vowels: ids never spell words


def _encode(number: int) -> str:
    out = []
    while number:
        number, digit = divmod(number, len(_ALPHABET))
        out.append(_ALPHABET[digit])
    return "".join(reversed(out)) or "0"


def new_queue_id() -> str:
    """A short id, unique on this machine: time in microseconds, pid, counter."""
    micros = time.time_ns() // 1000
    serial = (os.getpid() << 16) | (next(_counter) & 0xFFFF)
    return _encode(micros) + _encode(serial)


def maildir_name(size: int, when_ns: int) -> str:
    """A Maildir file name in the customary form (time, pid, counter, host).

    ``,S=<size>`` lets readers such as Dovecot skip a stat of the file.
    """
    seconds, nanos = divmod(when_ns, 1_000_000_000)
    pid = os.getpid()
    return f"{seconds}.M{nanos // 1000}P{pid}Q{next(_counter)}.{_HOST},S={size}"
