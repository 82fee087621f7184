"""Who may relay, and which clients the per-address limits leave alone."""

from __future__ import annotations

import pytest

from mailfast.policy import Networks, RelayPolicy


@pytest.mark.parametrize(
    ("networks", "client", "inside"),
    [
        (("127.0.0.0/8",), "127.0.0.9", True),
        (("127.0.0.0/8",), "::ffff:127.0.0.9", True),  # the same client, mapped
        (("::ffff:127.0.0.0/104",), "127.0.0.9", True),  # the same network, mapped
        (("::ffff:127.0.0.0/104",), "::ffff:127.0.0.9", True),
        (("::ffff:127.0.0.0/104",), "10.0.0.1", False),
        (("::1/128",), "::1", True),
        (("2001:db8::/32",), "2001:db8:1::5", True),
        (("192.0.2.0/24",), "192.0.3.1", False),
        ((), "127.0.0.1", False),
        (("127.0.0.0/8",), "unknown", False),  # no peer address at all
    ],
)
def test_networks(networks: tuple[str, ...], client: str, inside: bool) -> None:
    assert (client in Networks(networks)) is inside


def test_relay_policy() -> None:
    policy = RelayPolicy(("192.0.2.0/24",))
    assert policy.permits("192.0.2.7")
    assert not policy.permits("198.51.100.7")
    assert policy.permits("198.51.100.7", authenticated=True)
