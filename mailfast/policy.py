"""Who may relay: the decision the session applies to each RCPT.

Unauthenticated clients outside the trusted networks may only send to our
own domains; this is what keeps mailfast from being an open relay.
"""

from __future__ import annotations

import ipaddress


class RelayPolicy:
    def __init__(self, trusted_networks: tuple[str, ...]):
        self._networks = [
            ipaddress.ip_network(network, strict=False) for network in trusted_networks
        ]

    def permits(self, client_ip: str, authenticated: bool = False) -> bool:
        if authenticated:
            return True
        try:
            address = ipaddress.ip_address(client_ip)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped  # ::ffff:192.0.2.1 is 192.0.2.1
        return any(address in network for network in self._networks)
