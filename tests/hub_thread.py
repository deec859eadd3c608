"""A real hub on an event loop of its own thread, for tests driven by plain functions (hypothesis,
schemathesis) that reach it over real sockets."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

from tests.conftest import Hub, hub_settings, running_hub

T = TypeVar("T")


class HubThread:
    """A hub and a client session on an event loop in another thread."""

    def __init__(self, database: Path, **overrides: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._stop: asyncio.Event | None = None
        self.hub: Hub = self.run(self._start(database, overrides))

    def run(self, work: Awaitable[T], timeout: float = 30.0) -> T:
        async def wrapped() -> T:
            return await work

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(timeout)

    async def _start(self, database: Path, overrides: dict[str, Any]) -> Hub:
        started: asyncio.Future[Hub] = self.loop.create_future()
        self._stop = asyncio.Event()

        async def serve() -> None:
            async with running_hub(hub_settings(str(database), **overrides)) as hub:
                started.set_result(hub)
                assert self._stop is not None
                await self._stop.wait()

        self._task = self.loop.create_task(serve())
        return await started

    def close(self) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self.run(asyncio.wait_for(asyncio.shield(self._task), 10))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
