"""Who may relay: the decision the session applies to each RCPT.

Unauthenticated clients outside the trusted networks may only send to our
own domains; this is what keeps mailfast from being an open relay.
"""

from __future__ import annotations

import ipaddress


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
