"""Which address a handshake comes from, behind trusted proxies.

``--trusted-proxies CIDR,...`` names the load balancers in front of the
gateway. ``X-Forwarded-For`` is believed only when the TCP peer is one of
them; then the client is the rightmost address of the header that is not a
trusted proxy itself (each proxy appends the address it saw, so everything to
the left of the first untrusted hop may be the client's own invention).
From any other peer the header is ignored and the peer is the client.
Sans-I/O: no sockets here, only addresses and header values.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["TrustedProxies", "cidrs"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def cidrs(text: str) -> tuple[str, ...]:
    """``--trusted-proxies``: comma-separated CIDRs or addresses; a bad one is
    a usage error (ValueError, which argparse reports)."""
    parts = tuple(part.strip() for part in text.split(",") if part.strip())
    for part in parts:
        try:
            ipaddress.ip_network(part, strict=False)
        except ValueError:
            raise ValueError(f"not an address or CIDR: {part!r}") from None
    return parts


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    def __init__(self, networks: Iterable[str]) -> None:
        self.networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in networks
        )

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusted(self, address: str) -> bool:
        parsed = _address(address)
        return parsed is not None and any(parsed in network for network in self.networks)

    def client(self, peer: str, forwarded_for: Iterable[str]) -> str:
        """The client's address, given the TCP peer and every
        ``X-Forwarded-For`` header value in order."""
        if not self.trusted(peer):
            return peer
        hops = [hop for value in forwarded_for for hop in value.split(",") if hop.strip()]
        client = peer
        for hop in reversed(hops):
            parsed = _address(hop)
            if parsed is None:  # garbage from beyond the last trusted proxy
                break
            client = str(parsed)
            if not any(parsed in network for network in self.networks):
                break
        return client
