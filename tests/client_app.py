"""An app on the Python client SDK, run as its own process by tests/test_client_python.py:

    python -m tests.client_app edit DB CART URL TOKEN N SKU  queue N adds of SKU-0…4 offline, print "queued", wait
    python -m tests.client_app deliver DB URL TOKEN          resume every document, print "delivered"
    python -m tests.client_app cart DB CART URL TOKEN OPS    OPS ("add SKU 2; set SKU 1; remove SKU")
                                                             made offline, then sync; print the value

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


async def cart_ops(db: str, cart_id: str, url: str, token: str, script: str) -> None:
    """A Python device for cross-language tests: edits made offline, then synced; the value as JSON."""
    import json

    client = Client([url], token=token)
    docs = Documents(client, db)
    cart = docs.cart(cart_id)
    for command in filter(None, (c.split() for c in script.split(";"))):
        if command[0] == "add":
            cart.add(command[1], int(command[2]) if len(command) > 2 else 1)
        elif command[0] == "set":
            cart.set(command[1], int(command[2]))
        elif command[0] == "remove":
            cart.remove(command[1])
    print(json.dumps({"queued": cart.pending, "replica": cart.replica}), flush=True)
    async with client:
        await cart.wait_synced(60)
        print(json.dumps({"value": cart.value, "version": cart.version}), flush=True)
        await docs.close()


def main(argv: list[str]) -> None:
    if argv[0] == "cart":
        asyncio.run(cart_ops(*argv[1:6]))
    elif argv[0] == "edit":
        asyncio.run(edit(argv[1], argv[2], argv[3], argv[4], int(argv[5]), argv[6]))
    else:
        asyncio.run(deliver(argv[1], argv[2], argv[3]))


if __name__ == "__main__":
    main(sys.argv[1:])
