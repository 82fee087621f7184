"""Who receives mail here: mailboxes, aliases, catch-alls, over a real Config."""

from __future__ import annotations

import time
from itertools import pairwise

import pytest

from mailfast import config
from mailfast.addresses import Mailbox
from mailfast.directory import MAX_ALIAS_DEPTH, Directory, LocalTarget

DIRECTORY = Directory(
    config.parse(
        """
        [domains."example.com"]
        mailboxes = ["alice", "bob", "carol"]

        [domains."example.com".aliases]
        postmaster = "alice"
        team = ["alice", "bob"]
        everyone = ["team", "carol", "alice"]
        first = "second"
        second = "third"
        third = "carol"
        sales = "dave@example.net"
        outsourced = "someone@example.org"
        partly-outsourced = ["someone@example.org", "bob"]
        capitals = "ALICE"
        loop-a = "loop-b"
        loop-b = "loop-a"
        itself = "itself"
        loop-with-exit = ["loop-with-exit", "bob"]
        to-nobody = "nobody"

        [domains."example.net"]
        mailboxes = ["dave"]
        catch_all = "dave"

        [domains."example.org.test"]
        mailboxes = ["erin"]
        catch_all = "alice@example.com"
        """
    )
)

ALICE = LocalTarget("example.com", "alice")
BOB = LocalTarget("example.com", "bob")
CAROL = LocalTarget("example.com", "carol")
DAVE = LocalTarget("example.net", "dave")

RESOLVES = {
    "mailbox": ("alice", "example.com", (ALICE,)),
    "local part in capitals": ("ALICE", "example.com", (ALICE,)),
    "alias": ("postmaster", "example.com", (ALICE,)),
    "alias in capitals": ("PostMaster", "example.com", (ALICE,)),
    "alias to capitals": ("capitals", "example.com", (ALICE,)),
    "list": ("team", "example.com", (ALICE, BOB)),
    # Nested lists: each mailbox once, in the order first reached.
    "list of lists": ("everyone", "example.com", (ALICE, BOB, CAROL)),
    "chain": ("first", "example.com", (CAROL,)),
    "to another local domain": ("sales", "example.com", (DAVE,)),
    # Aliases never relay: the remote member is dropped, the local one stays.
    "list partly remote": ("partly-outsourced", "example.com", (BOB,)),
    "loop with a way out": ("loop-with-exit", "example.com", (BOB,)),
    "catch-all": ("anyone", "example.net", (DAVE,)),
    "mailbox beside a catch-all": ("dave", "example.net", (DAVE,)),
    "catch-all in another domain": ("anyone", "example.org.test", (ALICE,)),
    # RFC 5321 §4.5.1: <postmaster> alone is the first configured domain's.
    "postmaster without domain": ("postmaster", "", (ALICE,)),
    "PostMaster without domain": ("PostMaster", "", (ALICE,)),
}

UNKNOWN = {
    "no such mailbox": ("nobody", "example.com"),
    "alias only to a remote address": ("outsourced", "example.com"),
    "alias to no such mailbox": ("to-nobody", "example.com"),
    "loop": ("loop-a", "example.com"),
    "alias to itself": ("itself", "example.com"),
    "domain not served": ("alice", "example.org"),
    "mailbox of another domain": ("erin", "example.com"),
}


@pytest.mark.parametrize(
    ("local_part", "domain", "targets"), RESOLVES.values(), ids=RESOLVES.keys()
)
def test_resolves(
    local_part: str, domain: str, targets: tuple[LocalTarget, ...]
) -> None:
    assert DIRECTORY.resolve(Mailbox(local_part, domain)) == targets


@pytest.mark.parametrize(("local_part", "domain"), UNKNOWN.values(), ids=UNKNOWN.keys())
def test_unknown(local_part: str, domain: str) -> None:
    assert DIRECTORY.resolve(Mailbox(local_part, domain)) is None


def test_local_domains() -> None:
    assert DIRECTORY.is_local_domain("example.com")
    assert DIRECTORY.is_local_domain("example.net")
    assert not DIRECTORY.is_local_domain("example.org")
    # Domains reach the directory folded to lower case, trailing dot kept.
    assert not DIRECTORY.is_local_domain("example.com.")
    assert DIRECTORY.primary_domain == "example.com"


def test_target_address() -> None:
    assert DAVE.address == "dave@example.net"


def chain_of(links: int) -> Directory:
    """``hop0`` -> ``hop1`` -> ... -> ``hop<links - 1>`` -> the mailbox ``end``."""
    hops = [f"hop{n}" for n in range(links)] + ["end"]
    aliases = "\n".join(f'{hop} = "{after}"' for hop, after in pairwise(hops))
    return Directory(
        config.parse(
            f'[domains.localhost]\nmailboxes = ["end"]\n'
            f"[domains.localhost.aliases]\n{aliases}\n"
        )
    )


def test_alias_chain_as_deep_as_the_bound_resolves() -> None:
    directory = chain_of(MAX_ALIAS_DEPTH)
    assert directory.resolve(Mailbox("hop0", "localhost")) == (
        LocalTarget("localhost", "end"),
    )


def test_alias_chain_deeper_than_the_bound_is_a_loop() -> None:
    directory = chain_of(MAX_ALIAS_DEPTH + 1)
    assert directory.resolve(Mailbox("hop0", "localhost")) is None


def test_aliases_that_name_each_other_resolve_at_once() -> None:
    # Four lists that each name all four and alice. The session resolves RCPT
    # on the event loop, so expanding an alias again each time it is reached
    # multiplies the work by four at every level the depth bound allows: over
    # a second of a stalled worker for this one RCPT, against microseconds.
    names = [f"list{n}" for n in range(4)]
    members = ", ".join(f'"{name}"' for name in [*names, "alice"])
    aliases = "\n".join(f"{name} = [{members}]" for name in names)
    directory = Directory(
        config.parse(
            f'[domains.localhost]\nmailboxes = ["alice"]\n'
            f"[domains.localhost.aliases]\n{aliases}\n"
        )
    )
    started = time.perf_counter()
    targets = directory.resolve(Mailbox("list0", "localhost"))
    elapsed_s = time.perf_counter() - started
    assert targets == (LocalTarget("localhost", "alice"),)
    assert elapsed_s < 0.1


def test_mailbox_configured_in_capitals_is_reachable() -> None:
    # Local parts are compared folded, so a mailbox or alias the operator
    # wrote with capitals must still be found, not silently unreachable.
    directory = Directory(
        config.parse(
            '[domains.localhost]\nmailboxes = ["Alice"]\naliases = { Team = "Alice" }\n'
        )
    )
    for local_part in ("Alice", "alice", "ALICE", "team", "Team"):
        assert directory.resolve(Mailbox(local_part, "localhost")), local_part
