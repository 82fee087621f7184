"""Who may relay: the decision the session applies to each RCPT.

Unauthenticated clients outside the trusted networks may only send to our
own domains; this is what keeps mailfast from being an open relay.
"""

from __future__ import annotations

import ipaddress


class Networks:
    """A list of networks, and whether a client address is in one of them."""

    def __init__(self, networks: tuple[str, ...]):
        self._networks = [_unmapped(network) for network in networks]

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


def _unmapped(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The network, with an IPv4-mapped IPv6 one as the IPv4 network it is.

    Clients are compared by their IPv4 address when they have one, so
    ::ffff:127.0.0.0/104 must match what 127.0.0.0/8 matches.
    """
    network = ipaddress.ip_network(text, strict=False)
    if (
        isinstance(network, ipaddress.IPv6Network)
        and network.prefixlen >= 96
        and network.network_address.ipv4_mapped is not None
    ):
        return ipaddress.ip_network(
            f"{network.network_address.ipv4_mapped}/{network.prefixlen - 96}"
        )
    return network
