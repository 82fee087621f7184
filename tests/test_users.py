"""The users file: hashes, verification, senders, atomic locked writes, the command."""

from __future__ import annotations

import concurrent.futures
import io
import os
import stat
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import argon2
import pytest

from mailfast import usercmd, users
from mailfast.users import (
    NoSuchUserError,
    UserDatabase,
    UserExistsError,
    UsersFileError,
)

PASSWORD = "correct horse battery staple"
OTHER_PASSWORD = "Tr0ub4dor&3"
# A cheap hash with parameters unlike ours, for hand-written files.
CHEAP = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "users"


@pytest.fixture
def database(path: Path) -> UserDatabase:
    database = UserDatabase.load(path)
    database.add(
        "alice@example.com", PASSWORD, ["sales@example.com", "Info@Example.COM"]
    )
    database.add("bob@example.com", OTHER_PASSWORD)
    return database


# -- the database -----------------------------------------------------------


def test_round_trip(path: Path, database: UserDatabase) -> None:
    assert database.names() == ["alice@example.com", "bob@example.com"]
    reloaded = UserDatabase.load(path)
    assert reloaded.exists
    assert reloaded.names() == database.names()
    assert reloaded.addresses("alice@example.com") == (
        "sales@example.com",
        "Info@Example.COM",
    )

    reloaded.set_password("Bob@Example.com", "new password")
    assert reloaded.verify("bob@example.com", OTHER_PASSWORD) is None
    assert reloaded.verify("bob@example.com", "new password") == "bob@example.com"
    assert UserDatabase.load(path).verify("bob@example.com", "new password")

    reloaded.delete("BOB@example.com")
    assert reloaded.names() == ["alice@example.com"]
    assert UserDatabase.load(path).names() == ["alice@example.com"]
    # Only the file and its lock file: no temporary file left behind.
    assert sorted(os.listdir(path.parent)) == ["users", "users.lock"]


def test_new_file_is_private_whatever_the_umask(path: Path) -> None:
    old_umask = os.umask(0)
    try:
        UserDatabase.load(path).add("alice@example.com", PASSWORD)
    finally:
        os.umask(old_umask)
    assert path.stat().st_mode & 0o777 == 0o600
    assert Path(f"{path}.lock").stat().st_mode & 0o777 == 0o600


def test_rewrite_keeps_the_mode_the_operator_chose(
    path: Path, database: UserDatabase
) -> None:
    path.chmod(0o640)  # e.g. readable by the server's group
    database.add("carol@example.com", PASSWORD)
    assert path.stat().st_mode & 0o777 == 0o640


def test_rewrite_keeps_comments_and_untouched_lines(path: Path) -> None:
    alice = f"alice@example.com:{CHEAP.hash(PASSWORD)}:sales@example.com, a@example.com"
    bob = f"  bob@example.com:{CHEAP.hash(PASSWORD)}"
    path.write_text(f"# submission users\n\n{alice}\n# bob: until June\n{bob}\n")
    database = UserDatabase.load(path)
    assert database.addresses("alice@example.com") == (
        "sales@example.com",
        "a@example.com",
    )

    database.set_password("bob@example.com", OTHER_PASSWORD)
    database.add("carol@example.com", PASSWORD)
    lines = path.read_text().splitlines()
    assert lines[:4] == ["# submission users", "", alice, "# bob: until June"]
    assert lines[4].startswith("bob@example.com:$argon2id$") and lines[4] != bob
    assert lines[5].startswith("carol@example.com:$argon2id$")
    assert len(lines) == 6


def test_verify(database: UserDatabase) -> None:
    assert database.verify("alice@example.com", PASSWORD) == "alice@example.com"
    # The login in any case; the answer is the name as the file spells it.
    assert database.verify("ALICE@Example.Com", PASSWORD) == "alice@example.com"
    assert database.verify("alice@example.com", OTHER_PASSWORD) is None
    assert database.verify("alice@example.com", PASSWORD.upper()) is None
    assert database.verify("alice@example.com", "") is None
    assert database.verify("nobody@example.com", PASSWORD) is None
    assert database.verify("", PASSWORD) is None
    # Bytes that were not UTF-8, decoded with surrogateescape: just wrong.
    assert (
        database.verify("alice@example.com", b"\xff".decode(errors="surrogateescape"))
        is None
    )


def test_verify_compares_passwords_in_nfc(path: Path) -> None:
    database = UserDatabase.load(path)
    database.add("alice@example.com", "caf\u00e9")  # é as one code point
    assert database.verify("alice@example.com", "cafe\u0301")  # e + combining accent


def test_verify_hash_with_other_parameters(path: Path) -> None:
    path.write_text(f"alice@example.com:{CHEAP.hash(PASSWORD)}\n")
    database = UserDatabase.load(path)
    assert database.verify("alice@example.com", PASSWORD) == "alice@example.com"
    assert database.needs_rehash("alice@example.com")
    database.set_password("alice@example.com", PASSWORD)
    assert not database.needs_rehash("alice@example.com")


def test_dummy_hash_has_the_parameters_of_the_users(path: Path) -> None:
    path.write_text(
        "".join(f"u{i}@example.com:{CHEAP.hash(PASSWORD)}\n" for i in range(3))
    )
    database = UserDatabase.load(path)
    assert argon2.extract_parameters(
        database._snapshot.dummy_hash
    ) == argon2.extract_parameters(CHEAP.hash(PASSWORD))


def test_unknown_login_takes_as_long_as_a_wrong_password(
    database: UserDatabase,
) -> None:
    def seconds(login: str) -> float:
        start = time.perf_counter()
        assert database.verify(login, "wrong password") is None
        return time.perf_counter() - start

    known: list[float] = []
    unknown: list[float] = []
    for _ in range(7):  # interleaved, so a change in machine load hits both
        known.append(seconds("alice@example.com"))
        unknown.append(seconds("nobody@example.com"))
    ratio = statistics.median(unknown) / statistics.median(known)
    assert 1 / 3 < ratio < 3, f"unknown/known = {ratio:.2f}"


@pytest.mark.parametrize(
    ("user", "address", "allowed"),
    [
        ("alice@example.com", "alice@example.com", True),
        ("ALICE@example.com", "Alice@EXAMPLE.com", True),
        ("alice@example.com", "sales@example.com", True),
        ("alice@example.com", "SALES@Example.com", True),
        ("alice@example.com", "info@example.com", True),
        ("alice@example.com", "bob@example.com", False),
        ("alice@example.com", "alice@example.org", False),
        ("alice@example.com", "alice", False),
        ("alice@example.com", "", False),  # the null reverse-path <>
        ("bob@example.com", "sales@example.com", False),
        ("bob@example.com", "bob@example.com", True),
        ("nobody@example.com", "nobody@example.com", False),
    ],
)
def test_may_send_as(
    database: UserDatabase, user: str, address: str, allowed: bool
) -> None:
    assert database.may_send_as(user, address) is allowed


def test_a_server_sees_users_another_process_wrote(path: Path) -> None:
    server = UserDatabase.load(path)  # no file yet
    UserDatabase.load(path).add("alice@example.com", PASSWORD)  # `mailfast user`
    assert server.verify("alice@example.com", PASSWORD) == "alice@example.com"
    assert server.may_send_as("alice@example.com", "alice@example.com")
    UserDatabase.load(path).set_password("alice@example.com", OTHER_PASSWORD)
    assert server.verify("alice@example.com", PASSWORD) is None
    assert server.verify("alice@example.com", OTHER_PASSWORD) == "alice@example.com"
    UserDatabase.load(path).delete("alice@example.com")
    assert server.verify("alice@example.com", OTHER_PASSWORD) is None


def test_a_server_started_with_a_broken_file_reads_it_once_fixed(
    path: Path,
) -> None:
    path.write_text("alice@example.com:not a hash\n")
    with pytest.raises(UsersFileError):
        UserDatabase.load(path)
    server = UserDatabase.for_server(path)
    assert server.verify("alice@example.com", PASSWORD) is None
    path.unlink()
    UserDatabase.load(path).add("alice@example.com", PASSWORD)
    assert server.verify("alice@example.com", PASSWORD) == "alice@example.com"


def test_missing_file_means_no_users(path: Path) -> None:
    database = UserDatabase.load(path)
    assert not database.exists
    assert database.names() == []
    assert database.verify("alice@example.com", PASSWORD) is None
    assert not database.may_send_as("alice@example.com", "alice@example.com")
    assert not path.exists()


SECRET = "s3cret-pasted-here"
HASH = CHEAP.hash(SECRET)


@pytest.mark.parametrize(
    "line",
    [
        "alice@example.com",
        f"alice@example.com:{HASH}:sales@example.com:{SECRET}",
        f"alice@example.com:{SECRET}",
        f"alice@example.com:{HASH[:20]}{SECRET}",
        f"alice@example.com:{HASH}:{SECRET}",
        f"alice@example.com:{HASH}:sales@example.com,{SECRET}",
        f"alice smith:{HASH}",
        f":{HASH}",
        f"BOB@example.com:{HASH}",  # bob is on line 2
    ],
)
def test_malformed_line_is_named_without_its_secrets(path: Path, line: str) -> None:
    path.write_text(f"# users\nbob@example.com:{CHEAP.hash('x')}\n{line}\n")
    with pytest.raises(UsersFileError) as raised:
        UserDatabase.load(path)
    message = str(raised.value)
    assert message.startswith(f"{path}, line 3: ")
    assert SECRET not in message
    assert "$argon2" not in message


def test_file_not_utf8(path: Path) -> None:
    path.write_bytes(b"# users\n\xff:x\n")
    with pytest.raises(UsersFileError, match=r"line 2: not UTF-8"):
        UserDatabase.load(path)


def test_malformed_file_is_not_rewritten(path: Path) -> None:
    path.write_text(f"alice@example.com:{HASH}\n")
    database = UserDatabase.load(path)
    path.write_text("# users\nno hash here\n")  # broken by hand meanwhile
    with pytest.raises(UsersFileError):
        database.add("alice@example.com", PASSWORD)
    assert path.read_text() == "# users\nno hash here\n"


def test_add_refuses_a_taken_login_in_any_case(database: UserDatabase) -> None:
    with pytest.raises(UserExistsError):
        database.add("ALICE@example.com", OTHER_PASSWORD)
    assert database.verify("alice@example.com", PASSWORD)


def test_changes_to_unknown_users(database: UserDatabase) -> None:
    with pytest.raises(NoSuchUserError):
        database.delete("nobody@example.com")
    with pytest.raises(NoSuchUserError):
        database.set_password("nobody@example.com", PASSWORD)


@pytest.mark.parametrize(
    ("name", "password", "addresses"),
    [
        ("", PASSWORD, ()),
        ("alice smith", PASSWORD, ()),
        ("alice:x", PASSWORD, ()),
        ("#alice", PASSWORD, ()),
        ("alice\x00", PASSWORD, ()),
        ("alice@example.com", "", ()),
        ("alice@example.com", PASSWORD, ("not a mailbox",)),
        ("alice@example.com", PASSWORD, ("a@example.com,b@example.com",)),
        ("alice@example.com", PASSWORD, ('"a:b"@example.com',)),
    ],
)
def test_add_refuses_what_the_file_cannot_hold(
    path: Path, name: str, password: str, addresses: tuple[str, ...]
) -> None:
    with pytest.raises(ValueError):
        UserDatabase.load(path).add(name, password, addresses)
    assert not path.exists()


def test_concurrent_adds_all_land(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    # Two writers, each with its own view of the file: without the lock, one
    # read-modify-write would overwrite the other's user. A slow disk, between
    # reading the file and renaming the new one over it, makes sure they meet.
    write = users._write_atomically

    def slow_write(path: str, text: str) -> None:
        time.sleep(0.05)
        write(path, text)

    monkeypatch.setattr(users, "_write_atomically", slow_write)
    start = threading.Barrier(2)

    def add_users(writer: str) -> None:
        database = UserDatabase.load(path)
        start.wait()
        for i in range(4):
            database.add(f"{writer}{i}@example.com", PASSWORD)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(add_users, writer) for writer in "ab"]:
            done.result()  # raises what the thread raised
    assert sorted(UserDatabase.load(path).names()) == sorted(
        f"{w}{i}@example.com" for w in "ab" for i in range(4)
    )


# -- the command --------------------------------------------------------------


def run(
    monkeypatch: pytest.MonkeyPatch,
    path: Path,
    action: str,
    name: str | None = None,
    addresses: list[str] | None = None,
    stdin: str | None = None,
) -> int:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    return usercmd.run(str(path), action, name, addresses or [], stdin is not None)


def test_command_round_trip(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], path: Path
) -> None:
    outputs: list[str] = []

    def output() -> str:
        captured = capsys.readouterr()
        outputs.extend([captured.out, captured.err])
        return captured.out

    assert run(monkeypatch, path, "list") == 0
    assert output() == "-- 0 users\n"

    status = run(
        monkeypatch, path, "add", "alice@example.com", ["sales@example.com"], PASSWORD
    )
    assert status == 0
    assert run(monkeypatch, path, "add", "bob@example.com", [], OTHER_PASSWORD) == 0
    assert path.stat().st_mode & 0o777 == 0o600
    output()

    assert run(monkeypatch, path, "list") == 0
    assert output() == (
        "alice@example.com  sales@example.com\nbob@example.com\n-- 2 users\n"
    )

    assert run(monkeypatch, path, "passwd", "Alice@Example.com", stdin=" x y \n") == 0
    database = UserDatabase.load(path)
    assert database.verify("alice@example.com", " x y ") == "alice@example.com"
    assert database.verify("bob@example.com", OTHER_PASSWORD) == "bob@example.com"

    assert run(monkeypatch, path, "del", "bob@example.com") == 0
    assert run(monkeypatch, path, "list") == 0
    assert output() == "alice@example.com  sales@example.com\n-- 1 user\n"

    for text in outputs:
        assert PASSWORD not in text and OTHER_PASSWORD not in text
        assert "$argon2" not in text
    assert PASSWORD not in path.read_text()


def test_command_statuses(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], path: Path
) -> None:
    assert run(monkeypatch, path, "add", "alice@example.com", stdin=PASSWORD) == 0
    assert capsys.readouterr().err == "alice@example.com: added\n"
    before = path.read_text()
    cases = [
        # (action, name, addresses, stdin) -> status
        (("add", "ALICE@example.com", None, PASSWORD), 1),
        (("del", "nobody@example.com", None, None), 1),
        (("passwd", "nobody@example.com", None, PASSWORD), 1),
        (("add", None, None, PASSWORD), 2),
        (("passwd", "", None, PASSWORD), 2),
        (("list", "alice@example.com", None, None), 2),
        (("remove", "alice@example.com", None, None), 2),
        (("passwd", "alice@example.com", ["a@example.com"], PASSWORD), 2),
        (("del", "alice@example.com", None, PASSWORD), 2),
        (("passwd", "alice@example.com", None, ""), 2),
        (("passwd", "alice@example.com", None, "\n"), 2),
        (("add", "carol@example.com", ["not a mailbox"], PASSWORD), 2),
        (("add", "carol smith", None, PASSWORD), 2),
    ]
    for (action, name, addresses, stdin), status in cases:
        assert run(monkeypatch, path, action, name, addresses, stdin) == status, (
            action,
            name,
        )
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith("mailfast user")
        assert PASSWORD not in captured.err
    assert path.read_text() == before


def test_command_on_a_malformed_file(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], path: Path
) -> None:
    path.write_text(f"# users\nalice@example.com:{SECRET}\n")
    assert run(monkeypatch, path, "list") == 2
    err = capsys.readouterr().err
    assert "line 2" in err and SECRET not in err


def test_command_creates_a_missing_directory(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], path: Path
) -> None:
    # The first user is often added before the server ever ran and made var/.
    users = path / "no" / "users"
    status = run(monkeypatch, users, "add", "a@example.com", stdin="x")
    assert status == 0
    assert stat.S_IMODE(users.parent.stat().st_mode) == 0o700
    assert UserDatabase.load(str(users)).verify("a@example.com", "x") == "a@example.com"


def test_command_asks_the_terminal_twice(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], path: Path
) -> None:
    def terminal(*answers: str) -> None:
        replies = iter(answers)
        monkeypatch.setattr(usercmd.getpass, "getpass", lambda prompt: next(replies))

    terminal(PASSWORD, PASSWORD + " ")
    assert run(monkeypatch, path, "add", "alice@example.com") == 2
    assert not path.exists()

    terminal(PASSWORD, PASSWORD)
    assert run(monkeypatch, path, "add", "alice@example.com") == 0
    assert UserDatabase.load(path).verify("alice@example.com", PASSWORD)

    def interrupted(prompt: str) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(usercmd.getpass, "getpass", interrupted)
    assert run(monkeypatch, path, "passwd", "alice@example.com") == 2
    assert PASSWORD not in capsys.readouterr().err


def test_command_in_a_subprocess(tmp_path: Path) -> None:
    # Real standard input and output, as a script using --password-stdin sees.
    script = (
        "import sys; from mailfast.usercmd import run; "
        "sys.exit(run(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:], True))"
    )
    path = tmp_path / "users"
    for arguments, stdin in [
        (["add", "alice@example.com", "sales@example.com"], f"{PASSWORD}\n"),
        (["passwd", "alice@example.com"], f"{OTHER_PASSWORD}\n"),
    ]:
        done = subprocess.run(
            [sys.executable, "-c", script, str(path), *arguments],
            input=stdin,
            capture_output=True,
            check=False,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == ""
        for secret in (PASSWORD, OTHER_PASSWORD):
            assert secret not in done.stderr
    database = UserDatabase.load(path)
    assert database.verify("alice@example.com", OTHER_PASSWORD) == "alice@example.com"
    assert database.may_send_as("alice@example.com", "sales@example.com")
