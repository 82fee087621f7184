"""A raw SMTP client: exact bytes out, replies parsed, nothing smoothed over.

smtplib fixes line endings and dot-stuffs for us; the protocol tests need to
send precisely the bytes a broken or hostile client would, in one write or
split, and to tell "no reply yet" from "connection closed".
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def enhanced(self) -> str:
        """The RFC 3463 status code that opens the last line, e.g. ``5.1.1``."""
        first = self.lines[-1].split(" ", 1)[0] if self.lines else ""
        return first if first[:1].isdigit() and first.count(".") == 2 else ""

    def __str__(self) -> str:
        return " / ".join(f"{self.code} {line}" for line in self.lines)


class SmtpWire:
    """One connection; use as a context manager so the socket always closes."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.timeout = timeout
        self._pending = b""

    def __enter__(self) -> SmtpWire:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, line: str | bytes) -> Reply:
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.send(line + b"\r\n")
        return self.reply()

    def reply(self) -> Reply:
        """Read one reply, multi-line (``250-...``) or not; EOFError on close."""
        code = None
        lines = []
        while True:
            line = self._line()
            if len(line) < 3 or not line[:3].isdigit():
                raise AssertionError(f"not an SMTP reply line: {line!r}")
            if code is not None and int(line[:3]) != code:
                raise AssertionError(f"reply code changed mid-reply: {line!r}")
            code = int(line[:3])
            lines.append(line[4:].decode("utf-8", errors="replace"))
            if line[3:4] != b"-":
                return Reply(code, tuple(lines))

    def replies(self, count: int) -> list[Reply]:
        return [self.reply() for _ in range(count)]

    def _line(self) -> bytes:
        while b"\r\n" not in self._pending:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed; unread: {self._pending!r}")
            self._pending += chunk
        line, self._pending = self._pending.split(b"\r\n", 1)
        return line

    def silent_for(self, seconds: float) -> bytes:
        """Whatever the server sends within ``seconds``; b"" means it waited."""
        received = self._pending
        self._pending = b""
        deadline = time.monotonic() + seconds
        try:
            while (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                chunk = self.sock.recv(65536)
                if not chunk:
                    return received + b"<EOF>"
                received += chunk
        except TimeoutError:
            pass
        finally:
            self.sock.settimeout(self.timeout)
        return received

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True once the server has closed (FIN or RST) with nothing more sent."""
        self.sock.settimeout(timeout)
        try:
            return self._pending == b"" and self.sock.recv(65536) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(self.timeout)


def open_session(host: str, port: int, helo: str = "client.test") -> SmtpWire:
    """Connected, greeted and past EHLO; the caller closes it."""
    wire = SmtpWire(host, port)
    try:
        greeting = wire.reply()
        assert greeting.code == 220, greeting
        ehlo = wire.command(f"EHLO {helo}")
        assert ehlo.code == 250, ehlo
    except BaseException:
        wire.close()
        raise
    return wire


def dot_stuff(message: bytes) -> bytes:
    """DATA content as it goes on the wire (RFC 5321 §4.5.2), before the dot."""
    return re.sub(rb"(?m)^\.", b"..", message)
