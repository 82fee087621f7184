"""Who may relay: the decision the session applies to each RCPT.

Unauthenticated clients outside the trusted networks may only send to our
own domains; this is what keeps mailfast from being an open relay.
"""

from __future__ import annotations

import collections
import ipaddress
import time
from collections.abc import Callable


class Networks:
    """A list of networks, and whether a client address is in one of them."""

    def __init__(self, networks: tuple[str, ...]):
        self._networks = [
            ipaddress.ip_network(network, strict=False) for network in networks
        ]

    def __contains__(self, client_ip: str) -> bool:
        try:
            address = ipaddress.ip_address(client_ip)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped  # ::ffff:192.0.2.1 is 192.0.2.1
        return any(address in network for network in self._networks)


class RelayPolicy:
    def __init__(self, trusted_networks: tuple[str, ...]):
        self._trusted = Networks(trusted_networks)

    def permits(self, client_ip: str, authenticated: bool = False) -> bool:
        return authenticated or client_ip in self._trusted


class LoginFailures:
    """Failed logins per client address in a sliding window, for one worker.

    A client past ``max_failures`` within ``window_s`` is refused before its
    credentials are checked: guessing passwords then costs it the window,
    and costs us no hashing.
    """

    def __init__(
        self,
        max_failures: int,
        window_s: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.max_failures = max_failures
        self.window_s = window_s
        self._clock = clock
        self._failures: dict[str, collections.deque[float]] = {}

    def blocked(self, client_ip: str) -> bool:
        failures = self._failures.get(client_ip)
        if not failures:
            return False
        horizon = self._clock() - self.window_s
        while failures and failures[0] < horizon:
            failures.popleft()
        if not failures:
            del self._failures[client_ip]
            return False
        return len(failures) >= self.max_failures

    def record(self, client_ip: str) -> None:
        if len(self._failures) > 100_000:  # bound memory under a wide attack
            self._failures.clear()
        self._failures.setdefault(client_ip, collections.deque()).append(self._clock())
