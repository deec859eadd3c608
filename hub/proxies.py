"""The client's address behind reverse proxies the operator trusts (``--trusted-proxies``).

Per-address rate limits, connection caps and the access log read ``request.remote``. Behind a load
balancer that is the balancer's address, the same for every client: one client could exhaust the
limit of all. With ``--trusted-proxies 10.0.0.0/8,127.0.0.1`` a request whose *peer* is one of those
networks is read for ``X-Forwarded-For``, right to left, skipping trusted addresses: the first
address that is not a trusted proxy is the client (RFC 7239 §5.2's reasoning; the leftmost entries
are whatever the client wrote, and are never believed). Without the flag the header is ignored
entirely, so a client cannot pick its own address by sending it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web
from aiohttp.typedefs import Middleware

from hub.keys import CLIENT_ADDRESS, SETTINGS

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: Iterable[str]) -> tuple[Network, ...]:
    """Networks from "10.0.0.0/8", "127.0.0.1", "::1"; ValueError names a malformed one."""
    networks = []
    for item in text:
        item = item.strip()
        if item:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError as exc:
                raise ValueError(f"not an address or network: {item!r}") from exc
    return tuple(networks)


def _trusted(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(peer: str | None, forwarded_for: list[str], networks: tuple[Network, ...]) -> str | None:
    """The client's address: ``peer`` unless it is a trusted proxy, then the rightmost untrusted
    address of the ``X-Forwarded-For`` headers (all of them, in order). A malformed entry ends the
    walk there: the proxy wrote what follows it, not what precedes."""
    if peer is None or not _trusted(peer, networks):
        return peer
    hops = [hop.strip() for header in forwarded_for for hop in header.split(",")]
    client = peer
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            break
        client = hop
        if not _trusted(hop, networks):
            break
    return client


def forwarded_middleware(networks: tuple[Network, ...]) -> Middleware:
    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        peer = request.remote
        if peer is not None and _trusted(peer, networks):
            client = client_address(peer, request.headers.getall("X-Forwarded-For", []), networks)
            if client is not None and client != peer:
                request[CLIENT_ADDRESS] = client  # (the access log is given this request, not the clone)
                request = request.clone(remote=client)
        return await handler(request)

    return middleware


def trusted_networks(app: web.Application) -> tuple[Network, ...]:
    return parse_networks(app[SETTINGS].trusted_proxies)
