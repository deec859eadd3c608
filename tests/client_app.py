"""An app on the Python client SDK, run as its own process by tests/test_client_python.py:

    python -m tests.client_app edit DB CART URL TOKEN N SKU  queue N adds of SKU-0…4 offline, print "queued", wait
    python -m tests.client_app deliver DB URL TOKEN          resume every document, print "delivered"

``edit`` points the client at ``URL`` (a port nothing listens on: offline) and waits to be killed.
"""

from __future__ import annotations

import asyncio
import sys

from synchub_client import Client, Documents


async def edit(db: str, cart_id: str, url: str, token: str, count: int, sku: str) -> None:
    async with Client([url], token=token) as client:
        docs = Documents(client, db)
        cart = docs.cart(cart_id)
        for i in range(count):
            cart.add(f"{sku}-{i % 5}", 1 + i % 3)  # durable when it returns
        print(f"queued {cart.pending}", flush=True)
        await asyncio.Event().wait()


async def deliver(db: str, url: str, token: str) -> None:
    async with Client([url], token=token) as client:
        docs = Documents(client, db)
        for doc in docs.resume_all():
            print(f"resuming {doc.doc_id} with {doc.pending} queued", flush=True)
            await doc.wait_synced(60)
        print(f"delivered {docs.pending}", flush=True)
        await docs.close()


def main(argv: list[str]) -> None:
    if argv[0] == "edit":
        asyncio.run(edit(argv[1], argv[2], argv[3], argv[4], int(argv[5]), argv[6]))
    else:
        asyncio.run(deliver(argv[1], argv[2], argv[3]))


if __name__ == "__main__":
    main(sys.argv[1:])
