"""Why a node could not start, in one line: what failed and what to check.

``synchub serve`` prints this line (and exits 1) for the failures a newcomer or an operator meets first
— the port is taken, PostgreSQL refuses the connection or the role, Redis is not listening — instead of
the traceback, which ``--log-level debug`` still shows. Anything not recognised here is not a known
failure: it keeps its traceback.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator

from hub.settings import Settings
from storage.errors import StoreUnavailable
from sync.broker import BrokerUnavailable
from sync.redis_keys import LegacyLayout


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, its causes and contexts, and the members of exception groups, each once."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                todo.append(linked)


def _where(url: str) -> str:
    """A store or broker URL without its credentials: host, port and database."""
    return url.rsplit("@", 1)[-1]


def bind_error(exc: OSError, settings: Settings) -> str | None:
    """One line for a socket that cannot listen at the node's address, or None."""
    address = f"{settings.host}:{settings.port}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {address}: the address is already in use — is another synchub (or another"
            " server) running there? Stop it, or pick another --port."
        )
    if exc.errno == errno.EACCES:
        return (
            f"cannot listen on {address}: permission denied — ports below 1024 need privileges;"
            " pick another --port."
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {address}: no such address on this machine — check --host."
    return None


def explain(exc: BaseException, settings: Settings) -> str | None:
    """One line for a known start-up failure of a node with ``settings``, or None (not a known one)."""
    for link in _chain(exc):
        if isinstance(link, StoreUnavailable):
            if settings.uses_postgres:
                return (
                    f"cannot use the PostgreSQL database {_where(settings.database_url)}: {link} — check"
                    " that PostgreSQL is running there, and the user, password and database name in"
                    " --database-url."
                )
            return f"cannot open the SQLite store {settings.database_url}: {link} — check --database-url."
        if isinstance(link, LegacyLayout):
            return str(link)  # says what to run
        if isinstance(link, BrokerUnavailable) and settings.nats_url:
            return (
                f"cannot reach NATS JetStream at {_where(settings.nats_url)}: {link} — check that"
                " nats-server is running with JetStream (-js) and --nats-url."
            )
        if isinstance(link, BrokerUnavailable):
            return (
                f"cannot reach Redis at {_where(settings.redis_url or '')}: {link} — check that"
                " redis-server is running and --redis-url (or leave --redis-url out for the in-process"
                " broker of one node)."
            )
    for link in _chain(exc):
        if isinstance(link, OSError) and "bind" in str(link):
            message = bind_error(link, settings)
            if message is not None:
                return message
    return None
