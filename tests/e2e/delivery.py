"""Reading back what mailfast wrote into a Maildir.

mailfast prepends exactly three header fields to the message as received:
``Return-Path``, ``Delivered-To`` and ``Received`` (which may be folded over
several lines). Everything after them must be the client's message, octet for
octet, once dot-stuffing is undone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MESSAGE_ID = re.compile(
    rb"^Message-ID:[ \t]*(<[^>\r\n]*>)", re.IGNORECASE | re.MULTILINE
)


@dataclass(frozen=True)
class Delivery:
    return_path: str  # "<sender@example.org>" or "<>"
    delivered_to: str
    received: bytes  # the whole field, folding included
    message: bytes  # what the client sent, byte for byte

    @property
    def message_id(self) -> bytes | None:
        match = MESSAGE_ID.search(self.header_block)
        return match.group(1) if match else None

    @property
    def header_block(self) -> bytes:
        return self.message.split(b"\r\n\r\n", 1)[0]


def read_delivery(path: Path) -> Delivery:
    return parse_delivery(path.read_bytes())


def parse_delivery(data: bytes) -> Delivery:
    lines = data.splitlines(keepends=True)
    assert len(lines) >= 3, f"too short for a delivered message: {data[:200]!r}"

    return_path = _field(lines[0], b"Return-Path")
    delivered_to = _field(lines[1], b"Delivered-To")
    assert lines[2].startswith(b"Received: "), f"third line: {lines[2]!r}"

    # The Received field runs on while lines start with white space (RFC 5322
    # §2.2.3 folding).
    end = 3
    while end < len(lines) and lines[end][:1] in (b" ", b"\t"):
        end += 1
    for line in lines[:end]:
        assert line.endswith(b"\r\n") and b"\r" not in line[:-2], (
            f"prepended header line not CRLF-terminated: {line!r}"
        )
    received = b"".join(lines[2:end])
    prefix = len(b"".join(lines[:end]))
    return Delivery(return_path, delivered_to, received, data[prefix:])


def _field(line: bytes, name: bytes) -> str:
    assert line.startswith(name + b": "), f"expected {name!r} first: {line!r}"
    assert line.endswith(b"\r\n"), f"{name!r} not CRLF-terminated: {line!r}"
    return line[len(name) + 2 : -2].decode("utf-8")
