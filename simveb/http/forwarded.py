"""The client's address behind reverse proxies: `X-Forwarded-For` / `Forwarded`, trusted only from
the proxies named in `server.trusted_proxies`.

Behind the TLS proxy every production deployment has, the TCP peer is the proxy: keyed on it,
rate limits and lockouts would put the whole country behind one address. The forwarded headers
are written by whoever sends the request, so they are believed only when the peer is a configured
proxy, and then only up to the right-most hop that is not itself a trusted proxy: everything left
of it was written by the client and may be forged.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(text: str) -> str | None:
    """The IP address in a hop ("1.2.3.4", "1.2.3.4:80", "[2001:db8::1]:80", quoted), normalised, or None."""
    hop = text.strip().strip('"')
    if hop.startswith("["):
        hop = hop[1 : hop.find("]")] if "]" in hop else ""
    elif hop.count(":") == 1:
        hop = hop.split(":", 1)[0]  # IPv4 with a port
    try:
        return str(ipaddress.ip_address(hop))
    except ValueError:
        return None


def _forwarded_for(value: str) -> list[str]:
    # RFC 7239: `for=192.0.2.60;proto=http, for="[2001:db8::1]:4711"`
    hops = []
    for element in value.split(","):
        for pair in element.split(";"):
            name, _, v = pair.partition("=")
            if name.strip().lower() == "for":
                hops.append(v)
    return hops


class ClientAddresses:
    """Resolves the client address of a request from its peer and forwarded headers."""

    def __init__(self, trusted: Iterable[str]) -> None:
        self.networks: list[Network] = [ipaddress.ip_network(t.strip(), strict=False) for t in trusted]

    def trusts(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.networks)

    def resolve(self, peer: str, headers: Iterable[tuple[bytes, bytes]]) -> str:
        """The right-most untrusted hop when `peer` is a trusted proxy; else `peer` itself."""
        if not self.networks or not self.trusts(peer):
            return peer
        forwarded: list[str] = []
        x_forwarded: list[str] = []
        for name, value in headers:
            if name == b"forwarded":
                forwarded += _forwarded_for(value.decode("latin-1"))
            elif name == b"x-forwarded-for":
                x_forwarded += value.decode("latin-1").split(",")
        for hop in reversed(forwarded or x_forwarded):
            address = _address(hop)
            if address is None:
                # Unreadable where a proxy should have written: believe nothing further left.
                return peer
            if not self.trusts(address):
                return address
        return peer
