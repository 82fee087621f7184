"""``mailfast user``: add and delete submission users, set passwords, list them.

Works on the users file directly and may run while the server does: writes
are atomic and locked (see ``users``), and the server sees them on its next
reload. A password comes from the terminal, asked twice, or with
``--password-stdin`` from the first line of standard input, for scripts.
Passwords are never printed; ``list`` prints names and extra addresses, never
hashes. Only ``list`` writes to standard output; messages go to standard error.

Exit status: 0 done; 1 no such user, or the user already exists; 2 anything
else that stopped the command (usage, an unreadable or malformed file, a
password that is empty or typed differently twice).
"""

from __future__ import annotations

import getpass
import sys

from .users import NoSuchUserError, UserDatabase, UserExistsError, UsersFileError

EXIT_NO_SUCH_USER = 1  # also: the user already exists
EXIT_USAGE = 2


def run(
    path: str,
    action: str,
    name: str | None,
    addresses: list[str],
    password_stdin: bool,
) -> int:
    problem = _usage_problem(action, name, addresses, password_stdin)
    if problem:
        return _fail(EXIT_USAGE, f"mailfast user {action}: {problem}")
    try:
        database = UserDatabase.load(path)
        if action == "list":
            return _list(database)
        assert name is not None  # _usage_problem made sure
        return _change(database, action, name, addresses, password_stdin)
    except UsersFileError as exc:
        return _fail(EXIT_USAGE, f"mailfast user: {exc}")
    except OSError as exc:
        where = exc.filename or path
        return _fail(EXIT_USAGE, f"mailfast user: {where}: {exc.strerror}")


def _usage_problem(
    action: str, name: str | None, addresses: list[str], password_stdin: bool
) -> str | None:
    if action not in ("add", "del", "passwd", "list"):
        return "not one of add, del, passwd, list"
    if action == "list":
        return "takes no user name" if name is not None else None
    if not name:
        return "give the user's login name"
    if addresses and action != "add":
        return "extra addresses are given only with add"
    if password_stdin and action == "del":
        return "del takes no password"
    return None


def _change(
    database: UserDatabase,
    action: str,
    name: str,
    addresses: list[str],
    password_stdin: bool,
) -> int:
    # Check before asking for a password, not only after: typing one twice
    # for a command that cannot succeed wastes the operator's time.
    if action == "add" and name in database:
        return _fail(EXIT_NO_SUCH_USER, f"mailfast user add: {name} already exists")
    if action != "add" and name not in database:
        return _fail(EXIT_NO_SUCH_USER, f"mailfast user {action}: no such user {name}")
    try:
        if action == "del":
            database.delete(name)
            return _done(f"{name}: deleted")
        password = _read_password(password_stdin)
        if password is None:
            return EXIT_USAGE
        if action == "add":
            database.add(name, password, addresses)
            return _done(f"{name}: added")
        database.set_password(name, password)
        return _done(f"{name}: password set")
    except UserExistsError:  # added by someone else meanwhile
        return _fail(EXIT_NO_SUCH_USER, f"mailfast user add: {name} already exists")
    except NoSuchUserError:  # deleted by someone else meanwhile
        return _fail(EXIT_NO_SUCH_USER, f"mailfast user {action}: no such user {name}")
    except ValueError as exc:  # a bad login or address; never about the password
        return _fail(EXIT_USAGE, f"mailfast user {action}: {exc}")


def _read_password(from_stdin: bool) -> str | None:
    """The new password, or None after saying on stderr why there is none."""
    if from_stdin:
        # Only the line ending is taken off: spaces may be part of it.
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    else:
        try:
            password = getpass.getpass("New password: ")
            if getpass.getpass("Same password again: ") != password:
                _fail(EXIT_USAGE, "mailfast user: the two passwords differ")
                return None
        except (EOFError, KeyboardInterrupt):
            _fail(EXIT_USAGE, "\nmailfast user: no password given")
            return None
    if not password:
        _fail(EXIT_USAGE, "mailfast user: the password is empty")
        return None
    return password


def _list(database: UserDatabase) -> int:
    if not database.exists:
        print(f"mailfast user: {database.path} does not exist yet", file=sys.stderr)
    names = database.names()
    for name in names:
        fields = [name]
        if database.addresses(name):
            fields.append(",".join(database.addresses(name)))
        if database.needs_rehash(name):
            fields.append("(old hash parameters: set the password again)")
        print("  ".join(fields))
    print(f"-- {len(names)} user{'s' if len(names) != 1 else ''}")
    return 0


def _done(message: str) -> int:
    print(message, file=sys.stderr)
    return 0


def _fail(status: int, message: str) -> int:
    print(message, file=sys.stderr)
    return status
