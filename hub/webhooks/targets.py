"""Where a webhook may be sent: the server-side request forgery (SSRF) checks (docs/security.md, "Webhooks").

A webhook makes the hub send requests to a URL its caller chose; left unchecked, that URL could reach
what only the hub can reach — the cloud's metadata service (169.254.169.254), the database, an admin
port on localhost. So the target's host is resolved and **every** address it resolves to must be a
public unicast one: loopback, private (RFC 1918, ULA), link-local, multicast, unspecified, shared
(100.64/10), documentation, benchmarking and other reserved ranges are refused, IPv4 and IPv6 alike,
and IPv6 addresses that embed an IPv4 one (IPv4-mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``,
6to4, Teredo) are judged by the IPv4 address they carry.

The check runs when an endpoint is made or its URL changed, **and again at every connection**: a name
that resolved to a public address then may resolve to 127.0.0.1 now (DNS rebinding). At delivery the
hub's HTTP client resolves through :class:`CheckingResolver`, which returns only checked addresses, and
connects to the address it returned — never to a second resolution. An IP literal is checked the same
way before each attempt (aiohttp does not resolve literals).

``--webhook-allow-hosts`` names the exceptions: host names (the URL's host, exactly, any address they
resolve to), addresses and networks (``127.0.0.1``, ``10.0.0.0/8``, ``::1``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
RESOLVE_TIMEOUT_SECONDS = 5.0
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))


class TargetRefused(OSError):
    """A target the hub will not send to. An ``OSError`` so that aiohttp's connector lets it through
    from the resolver as the cause of the connection's failure."""

    def __init__(self, code: str, reason: str, message: str, address: str | None = None) -> None:
        super().__init__(message)
        self.code = code  # webhook_target_forbidden, webhook_target_unresolvable
        self.reason = reason  # loopback, private, link_local, multicast, unspecified, reserved, unresolvable
        self.message = message
        self.address = address


@dataclass(frozen=True, slots=True)
class AllowList:
    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, items: Iterable[str]) -> AllowList:
        """Host names, addresses and networks; ValueError naming a malformed one."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in items:
            item = raw.strip()
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
                continue
            except ValueError:
                pass
            name = item.lower().rstrip(".")
            if not name or any(c in name for c in "/:@ []") or len(name) > 253:
                raise ValueError(f"{item!r} is neither a host name nor an address or network")
            hosts.add(name)
        return cls(frozenset(hosts), tuple(networks))

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def allows_address(self, address: IPAddress) -> bool:
        return any(address.version == net.version and address in net for net in self.networks)


def refusal_reason(address: IPAddress) -> str | None:
    """Why an address is not a public unicast one (None: it is)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # the IPv4 address itself, reached over an IPv6 socket
            return refusal_reason(address.ipv4_mapped)
        embedded = address.sixtofour
        if embedded is None and any(address in net for net in _NAT64):
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is not None:
            reason = refusal_reason(embedded)
            if reason is not None:
                return reason
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link_local"
    if address.is_multicast:
        return "multicast"
    if address.is_private:
        return "private"
    if address.is_reserved or not address.is_global:
        return "reserved"
    return None


def _refused(address: IPAddress, reason: str, host: str) -> TargetRefused:
    named = "" if host == str(address) else f" ({host} resolves to it)"
    return TargetRefused(
        "webhook_target_forbidden",
        reason,
        f"webhooks are not sent to {reason.replace('_', '-')} addresses such as {address}{named}",
        str(address),
    )


def check_address(address: IPAddress, host: str, allow: AllowList) -> None:
    reason = refusal_reason(address)
    if reason is not None and not allow.allows_address(address) and not allow.allows_host(host):
        raise _refused(address, reason, host)


def literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


async def resolve_checked(host: str, port: int, allow: AllowList) -> list[tuple[IPAddress, int]]:
    """Every address ``host`` resolves to, with its family, if all of them may be sent to; else
    :class:`TargetRefused` (one refused address refuses the host)."""
    found = literal(host)
    if found is not None:
        check_address(found, host, allow)
        return [(found, socket.AF_INET6 if found.version == 6 else socket.AF_INET)]
    name = host.rstrip(".")
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_SECONDS):
            infos = await asyncio.get_running_loop().getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        raise TargetRefused(
            "webhook_target_unresolvable", "unresolvable", f"the host {name!r} does not resolve: {exc}"
        ) from None
    addresses: list[tuple[IPAddress, int]] = []
    for family, _, _, _, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])  # (a scope id is not the address)
        check_address(address, name, allow)
        if (address, family) not in addresses:
            addresses.append((address, family))
    if not addresses:
        raise TargetRefused(
            "webhook_target_unresolvable", "unresolvable", f"the host {name!r} has no address"
        )
    return addresses


async def check_url(url: str, allow: AllowList) -> None:
    """The target of ``url`` may be sent to now (TargetRefused otherwise)."""
    parsed = URL(url)
    assert parsed.host is not None and parsed.port is not None  # (checked when the URL was accepted)
    await resolve_checked(parsed.host, parsed.port, allow)


class CheckingResolver(AbstractResolver):
    """aiohttp's resolver for webhook deliveries: only checked addresses, which the connector then connects
    to (no second resolution)."""

    def __init__(self, allow: AllowList) -> None:
        self._allow = allow

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            {
                "hostname": host,
                "host": str(address),
                "port": port,
                "family": address_family,
                "proto": socket.IPPROTO_TCP,
                "flags": socket.AI_NUMERICHOST,
            }
            for address, address_family in await resolve_checked(host, port, self._allow)
        ]

    async def close(self) -> None:
        return None
