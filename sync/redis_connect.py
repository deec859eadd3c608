"""Redis clients from a URL: one server (``redis://``, ``rediss://``, ``unix://``) or a Redis Cluster
(``redis+cluster://host:port``, ``rediss+cluster://…``: any one node; the client discovers the others,
follows MOVED and ASK redirections, and refreshes its map of the slots after a failover).

A cluster client retries a command that failed on a connection error or a redirection (up to
``cluster_retries`` times, refreshing the slot map in between): that is how it rides out a failover.
A write whose reply was lost may therefore run twice; the broker's publishes carry a dedupe version
wherever that matters (the relay's always do).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

Client = Redis | RedisCluster


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def node_url(url: str) -> str:
    """``url`` with the cluster scheme replaced by the plain one redis-py parses."""
    scheme, sep, rest = url.partition("://")
    return CLUSTER_SCHEMES.get(scheme.lower(), scheme) + sep + rest


def _without_query(url: str, name: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != name]
    return urlunsplit(parts._replace(query=urlencode(query)))


def open_client(
    url: str,
    *,
    max_connections: int = 50,
    timeout: float | None = None,
    socket_timeout: float | None = None,
    cluster_retries: int = 6,
    seeds: Sequence[tuple[str, int]] = (),
) -> Client:
    """A client for ``url``. One server: a bounded pool whose callers wait up to ``timeout`` for a
    connection, and no retries. A cluster: ``max_connections`` per node, ``cluster_retries`` retries
    with backoff, and ``seeds`` (host, port) as nodes to learn the topology from besides the URL's
    (a replacement client starts from the nodes its predecessor knew, in case the URL's is down).
    ``socket_timeout`` (when given) wins over the URL's."""
    if is_cluster_url(url):
        extra: dict[str, Any] = {} if socket_timeout is None else {"socket_timeout": socket_timeout}
        if seeds:
            extra["startup_nodes"] = [ClusterNode(host, port) for host, port in seeds]
        return RedisCluster.from_url(
            _without_query(node_url(url), "socket_timeout") if socket_timeout is not None else node_url(url),
            max_connections=max_connections,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), cluster_retries),
            **extra,
        )
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout, retry=Retry(NoBackoff(), 0)
    )
    if socket_timeout is not None:
        pool.connection_kwargs["socket_timeout"] = socket_timeout
    return Redis.from_pool(pool)
