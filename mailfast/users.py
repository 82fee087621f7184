"""Submission users (RFC 6409): the password file, its hashes, who may send as whom.

The file
--------
One user per line, fields separated by colons, the third one optional::

    # login:hash[:extra senders]
    alice@example.com:$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>
    bob@example.com:$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>:sales@example.com

- **login**: what the client sends in AUTH PLAIN or LOGIN, normally an email
  address. Logins are compared without regard to case, so ``Alice@Example.com``
  and ``alice@example.com`` are the same user and only one of them may appear;
  the spelling in the file is the canonical name. No colon, whitespace or
  control character, and no ``#`` at the start.
- **hash**: an Argon2 hash string as argon2-cffi writes it. Its alphabet has no
  colon, which is what keeps the split unambiguous.
- **extra senders**: mailboxes, separated by commas (spaces after them are
  fine), that the user may give as the envelope sender besides the login
  itself.

Blank lines and lines whose first non-blank character is ``#`` are ignored.
``mailfast user`` rewrites only the line of the user it changes: comments,
order and hand formatting elsewhere stay as they were.

Readers and writers
-------------------
The server only reads: a writer builds the whole new file beside the old one and
renames it over, so a reader sees the old file or the new one, never a mix, and
needs no lock. Writers (``mailfast user``, possibly two at once) serialise their
read-modify-write with an exclusive ``flock`` on ``PATH.lock``, which is never
removed: removing it would let two writers hold locks on two different files.
A new users file is created with mode 0600; a rewrite keeps the mode and owner
of the file it replaces, so a file the operator gave to the server's user stays
readable by it.

Within one process a ``UserDatabase`` is safe to share between threads: its
contents are one immutable snapshot, replaced in a single assignment.

Timing
------
``verify`` runs Argon2 whether or not the login exists; for an unknown login it
checks the password against a dummy hash made with the parameters most users'
hashes have, so a client cannot tell unknown logins from wrong passwords by the
time the answer takes.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import logging
import os
import secrets
import stat
import tempfile
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import argon2
from argon2.exceptions import InvalidHashError, VerificationError
from argon2.low_level import ARGON2_VERSION

from .addresses import AddressError, parse_mailbox

log = logging.getLogger("mailfast.users")

# Argon2id, 19 MiB, 2 passes, 1 lane: the OWASP password storage setting.
# argon2-cffi's default (RFC 9106 "low memory": 64 MiB, 3 passes, 4 lanes)
# took a median 145-185 ms per verification on the 2-core build machine, far
# over a 50 ms budget; this takes 19-20 ms there. One lane also means one
# verification occupies one core, not every core of a small machine.
TIME_COST = 2
MEMORY_COST_KIB = 19_456
PARALLELISM = 1

_HASHER = argon2.PasswordHasher(
    time_cost=TIME_COST, memory_cost=MEMORY_COST_KIB, parallelism=PARALLELISM
)
# What _HASHER's hashes carry; the dummy hash's while the file has no users.
_PARAMETERS = argon2.Parameters(
    type=_HASHER.type,
    version=ARGON2_VERSION,
    salt_len=_HASHER.salt_len,
    hash_len=_HASHER.hash_len,
    time_cost=TIME_COST,
    memory_cost=MEMORY_COST_KIB,
    parallelism=PARALLELISM,
)


class UsersFileError(Exception):
    """The users file cannot be used; the message names the line, never a hash."""


class UserExistsError(Exception):
    """``add`` of a login that is already in the file (in any case)."""


class NoSuchUserError(Exception):
    """``delete`` or ``set_password`` of a login that is not in the file."""


@dataclass(frozen=True, slots=True)
class User:
    name: str  # the login as spelled in the file: the canonical user name
    password_hash: str
    addresses: tuple[str, ...]  # extra envelope senders, as spelled in the file


@dataclass(frozen=True, slots=True)
class _Line:
    text: str  # verbatim, without the newline: written back unchanged
    user: User | None  # None for comments and blank lines


@dataclass(frozen=True, slots=True)
class _Snapshot:
    lines: tuple[_Line, ...]
    users: dict[str, User]  # by folded login; never mutated once built
    dummy_hash: str


class UserDatabase:
    """The users of one password file, as read at load, last write or last change.

    A server reads the file again when ``verify`` finds that it has changed,
    so that ``mailfast user add`` takes effect without a reload.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._identity: tuple[int, int, int] | None = None
        try:
            with open(self.path, "rb") as f:
                self._identity = _identity(os.fstat(f.fileno()))
                data = f.read()
        except FileNotFoundError:
            data = None
        self.exists = data is not None  # False: no users; the server should warn
        self._snapshot = _build(_parse(self.path, data or b""), None)

    def refresh(self) -> None:
        """Read the file again if it was replaced or changed since it was read.

        Writers replace it by rename, so a new inode or size or time tells.
        Costs one stat; a file that cannot be read keeps the users we have.
        """
        try:
            identity = _identity(os.stat(self.path))
        except FileNotFoundError:
            identity = None
        if identity == self._identity:
            return
        try:
            with open(self.path, "rb") as f:
                identity = _identity(os.fstat(f.fileno()))
                snapshot = _build(_parse(self.path, f.read()), self._snapshot)
        except FileNotFoundError:
            identity, snapshot = None, _build([], self._snapshot)
        except (OSError, UsersFileError) as exc:
            log.error(
                "cannot read %s again: %s; keeping the users read before",
                self.path,
                exc,
            )
            self._identity = identity  # do not retry on every login
            return
        self._snapshot = snapshot
        self._identity = identity
        self.exists = identity is not None
        log.info("%s changed: %d users", self.path, len(snapshot.users))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> UserDatabase:
        """Read the file at ``path`` afresh (at start and on every reload)."""
        return cls(path)

    @classmethod
    def for_server(cls, path: str | os.PathLike[str]) -> UserDatabase:
        """``load``, except that a file that cannot be read is not fatal.

        A worker must start all the same: it has no users until the file is
        fixed, and the first login after the fix reads it (``refresh``).
        """
        try:
            return cls(path)
        except (OSError, UsersFileError) as exc:
            log.error("cannot read %s: %s; no login succeeds until it can", path, exc)
        database = cls.__new__(cls)
        database.path = os.fspath(path)
        database._identity = _NEVER_READ
        database.exists = False
        database._snapshot = _build([], None)
        return database

    def verify(self, login: str, password: str) -> str | None:
        """The canonical user name if ``password`` is right for ``login``, else None.

        Blocking (tens of milliseconds) and thread-safe: call it from a thread
        pool. Takes as long for an unknown login as for a wrong password.
        """
        self.refresh()
        snapshot = self._snapshot  # one read: a writer may swap it meanwhile
        user = snapshot.users.get(_fold(login))
        password_hash = snapshot.dummy_hash if user is None else user.password_hash
        try:
            _HASHER.verify(password_hash, _normalize(password))
        except (VerificationError, InvalidHashError):
            return None
        return None if user is None else user.name

    def may_send_as(self, user: str, address: str) -> bool:
        """Whether ``user`` may give ``address`` (no angle brackets) as sender.

        True for the login itself and for the user's extra addresses, compared
        without regard to case in both the local part and the domain.
        """
        entry = self._snapshot.users.get(_fold(user))
        if entry is None or not address:
            return False
        wanted = _fold(address)
        return wanted == _fold(entry.name) or any(
            wanted == _fold(extra) for extra in entry.addresses
        )

    def names(self) -> list[str]:
        """Canonical user names, in file order."""
        return [line.user.name for line in self._snapshot.lines if line.user]

    def addresses(self, name: str) -> tuple[str, ...]:
        """The extra envelope senders of ``name``; () for an unknown name."""
        entry = self._snapshot.users.get(_fold(name))
        return entry.addresses if entry else ()

    def needs_rehash(self, name: str) -> bool:
        """Whether the hash of ``name`` was made with other Argon2 parameters.

        Only parses the hash string (microseconds). Verification never rewrites
        a hash, since the server only reads the file; setting the password
        again brings it up to date.
        """
        entry = self._snapshot.users.get(_fold(name))
        return entry is not None and _HASHER.check_needs_rehash(entry.password_hash)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _fold(name) in self._snapshot.users

    def add(self, name: str, password: str, addresses: Iterable[str] = ()) -> None:
        """Append a user; UserExistsError if the login is taken in any case."""
        _check_name(name)
        addresses = tuple(addresses)
        for address in addresses:
            _check_address(address)
        user = User(name, _hash(password), addresses)

        def change(lines: tuple[_Line, ...], users: dict[str, User]) -> list[_Line]:
            if _fold(name) in users:
                raise UserExistsError(users[_fold(name)].name)
            return [*lines, _Line(_format(user), user)]

        self._rewrite(change)

    def delete(self, name: str) -> None:
        """Remove the line of ``name``; NoSuchUserError if there is none."""

        def change(lines: tuple[_Line, ...], users: dict[str, User]) -> list[_Line]:
            _existing(users, name)
            return [line for line in lines if not _is_line_of(line, name)]

        self._rewrite(change)

    def set_password(self, name: str, password: str) -> None:
        """Replace the hash of ``name``, keeping its spelling and addresses."""
        password_hash = _hash(password)

        def change(lines: tuple[_Line, ...], users: dict[str, User]) -> list[_Line]:
            user = dataclasses.replace(
                _existing(users, name), password_hash=password_hash
            )
            return [
                _Line(_format(user), user) if _is_line_of(line, name) else line
                for line in lines
            ]

        self._rewrite(change)

    def _rewrite(
        self, change: Callable[[tuple[_Line, ...], dict[str, User]], list[_Line]]
    ) -> None:
        with self._locked():
            # Change what the file holds now, not what this object read
            # earlier: another writer may have been here since.
            try:
                with open(self.path, "rb") as f:
                    current = _build(_parse(self.path, f.read()), self._snapshot)
            except FileNotFoundError:
                current = _build([], self._snapshot)
            lines = change(current.lines, current.users)
            _write_atomically(self.path, "".join(line.text + "\n" for line in lines))
            self._snapshot = _build(lines, current)
            self._identity = _identity(os.stat(self.path))
            self.exists = True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # flock conflicts between open file descriptions, so two threads of one
        # process exclude each other as two processes do. The first user added
        # may come before the server ever ran and made the directory.
        os.makedirs(
            os.path.dirname(os.path.abspath(self.path)), mode=0o700, exist_ok=True
        )
        fd = os.open(
            self.path + ".lock", os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock


_NEVER_READ = (-1, -1, -1)  # unlike any file's identity: read at the next login


def _identity(status: os.stat_result) -> tuple[int, int, int]:
    return status.st_ino, status.st_size, status.st_mtime_ns


def _parse(path: str, data: bytes) -> list[_Line]:
    lines: list[_Line] = []
    seen: dict[str, int] = {}  # folded login -> line number
    for number, raw in enumerate(data.splitlines(), 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UsersFileError(f"{path}, line {number}: not UTF-8") from None
        try:
            user = _parse_user(text)
        except ValueError as exc:
            raise UsersFileError(f"{path}, line {number}: {exc}") from None
        if user is not None:
            first = seen.setdefault(_fold(user.name), number)
            if first != number:
                raise UsersFileError(
                    f"{path}, line {number}: {user.name} is already on line {first}"
                )
        lines.append(_Line(text, user))
    return lines


def _parse_user(text: str) -> User | None:
    """The user on one line, or None for a comment; ValueError names the field.

    The messages never quote the hash field: a mangled line may hold a
    password pasted in the wrong place.
    """
    text = text.strip()
    if not text or text.startswith("#"):
        return None
    fields = text.split(":")
    if len(fields) not in (2, 3):
        raise ValueError("expected login:hash or login:hash:addresses")
    name, password_hash = fields[0].strip(), fields[1].strip()
    _check_name(name)
    try:
        argon2.extract_parameters(password_hash)
    except InvalidHashError:
        raise ValueError("the hash is not an Argon2 hash") from None
    addresses: tuple[str, ...] = ()
    if len(fields) == 3:
        # Tolerate what hand-editing leaves: spaces, a trailing comma.
        addresses = tuple(a.strip() for a in fields[2].split(",") if a.strip())
        for address in addresses:
            _check_address(address)
    return User(name, password_hash, addresses)


def _build(lines: Iterable[_Line], previous: _Snapshot | None) -> _Snapshot:
    lines = tuple(lines)
    users = {_fold(line.user.name): line.user for line in lines if line.user}
    return _Snapshot(lines, users, _dummy_hash(users.values(), previous))


def _dummy_hash(users: Iterable[User], previous: _Snapshot | None) -> str:
    """A hash of a random password, with the parameters most users' hashes have.

    An unknown login is verified against it; with the same parameters as a
    real user's hash, the verification costs the same.
    """
    counts = collections.Counter(
        dataclasses.astuple(argon2.extract_parameters(user.password_hash))
        for user in users
    )
    if counts:
        parameters = argon2.Parameters(*counts.most_common(1)[0][0])
    else:
        parameters = _PARAMETERS
    # Making one costs a whole hash: reuse the previous one when it fits.
    if previous and argon2.extract_parameters(previous.dummy_hash) == parameters:
        return previous.dummy_hash
    return argon2.PasswordHasher.from_parameters(parameters).hash(secrets.token_hex(16))


def _write_atomically(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    try:
        old = os.stat(path)
    except FileNotFoundError:
        old = None
    # mkstemp creates the file with mode 0600, whatever the umask.
    fd, temporary = tempfile.mkstemp(
        dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            if old is not None:
                os.fchmod(f.fileno(), stat.S_IMODE(old.st_mode))
                if (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                    os.fchown(f.fileno(), old.st_uid, old.st_gid)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    # The rename is durable only once the directory is.
    directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)


def _format(user: User) -> str:
    fields = [user.name, user.password_hash]
    if user.addresses:
        fields.append(",".join(user.addresses))
    return ":".join(fields)


def _existing(users: dict[str, User], name: str) -> User:
    try:
        return users[_fold(name)]
    except KeyError:
        raise NoSuchUserError(name) from None


def _is_line_of(line: _Line, name: str) -> bool:
    return line.user is not None and _fold(line.user.name) == _fold(name)


def _check_name(name: str) -> None:
    if not name:
        raise ValueError("the login is empty")
    if name.startswith("#"):
        raise ValueError("a login cannot start with #")
    if any(c == ":" or c.isspace() or not c.isprintable() for c in name):
        raise ValueError("a login cannot hold a colon, space or control character")


def _check_address(address: str) -> None:
    # Commas and colons would split the field; parse_mailbox allows both
    # inside a quoted local part.
    if "," in address or ":" in address:
        raise ValueError("an extra address cannot hold a comma or colon")
    try:
        parse_mailbox(address.encode("utf-8"), utf8=True)
    except AddressError:
        raise ValueError("an extra address is not a mailbox") from None


def _hash(password: str) -> str:
    if not password:
        raise ValueError("the password is empty")
    return _HASHER.hash(_normalize(password))


def _normalize(password: str) -> bytes:
    # RFC 8265 §4.2 (OpaqueString): NFC, so a password typed where the
    # keyboard composes characters matches one typed where it does not.
    # "surrogatepass": a password decoded with surrogateescape from bytes that
    # are not UTF-8 gets a plain no from verify, not an exception.
    return unicodedata.normalize("NFC", password).encode("utf-8", "surrogatepass")


def _fold(name: str) -> str:
    # lower(), not casefold(): casefold maps "ß" to "ss" and would make two
    # different mailboxes one login.
    return name.lower()
