"""A terminal cart that works offline: edit it with the hub down, watch it sync when the hub is back.

    python examples/cart_demo.py --url http://127.0.0.1:8080 --token "$TOKEN" --cart "$CART_ID"

Commands: ``add SKU [N]``, ``set SKU N``, ``remove SKU``, ``show``, ``quit``. Edits are written to the
device's SQLite file (``--db``) before they are sent; kill the demo at any time and start it again:
queued edits go out once. Run it twice with two ``--db`` files (two devices) on one ``--cart`` to see
concurrent edits merge, and conflicts shown. ``--script "add TEA 2; show"`` runs commands and exits
once everything is acknowledged.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid

from synchub_client import CartDocument, Change, Client, Documents


def show(cart: CartDocument) -> str:
    lines = [f"cart {cart.doc_id} — {cart.status or 'open'}, version {cart.version}, {cart.pending} queued"]
    if cart.client.connected:
        lines.append(f"  online via {cart.client.transport.value} at {cart.client.url}")
    else:
        lines.append(f"  offline ({cart.client.state.value})")
    for sku, quantity in sorted(cart.value.items()):
        lost = cart.conflicts.get(sku)
        lines.append(
            f"  {sku:<20} {quantity:>4}" + (f"   (also set on another device: {lost})" if lost else "")
        )
    for edit in cart.refused:
        lines.append(f"  refused by the hub: {edit.op} — {edit.code}: {edit.message}")
    for rejected in cart.rejected_edits:
        lines.append(f"  after checkout, not applied: {rejected.kind} {rejected.sku} {rejected.quantity}")
    return "\n".join(lines)


def run_command(cart: CartDocument, text: str) -> bool:
    words = text.split()
    if not words:
        return True
    command, args = words[0], words[1:]
    try:
        if command == "add":
            cart.add(args[0], int(args[1]) if len(args) > 1 else 1)
        elif command == "set":
            cart.set(args[0], int(args[1]))
        elif command == "remove":
            cart.remove(args[0])
        elif command == "show":
            print(show(cart))
        elif command in ("quit", "exit"):
            return False
        else:
            print("commands: add SKU [N] | set SKU N | remove SKU | show | quit")
    except (IndexError, ValueError) as exc:
        print(f"? {exc}")
    return True


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", action="append", required=True, help="a node's base URL (repeatable)")
    parser.add_argument("--token", required=True, help="a customer's bearer token")
    parser.add_argument("--cart", default=None, help="the cart's UUID (default: a new cart)")
    parser.add_argument("--db", default="cart-demo.sqlite3", help="this device's offline store")
    parser.add_argument("--script", help="commands separated by ';', then exit once synced")
    args = parser.parse_args()
    cart_id = args.cart or str(uuid.uuid4())

    async with Client(args.url, token=args.token) as client:
        documents = Documents(client, args.db)
        cart = documents.cart(cart_id)

        def on_change(change: Change) -> None:
            if change.kind in ("remote", "refused") and args.script is None:
                print(f"\n[{change.kind}] " + show(cart), flush=True)

        cart.listeners.append(on_change)
        if args.script is not None:
            for command in args.script.split(";"):
                run_command(cart, command.strip())
            await cart.wait_synced(60)
            print(show(cart))
        else:
            print(show(cart))
            loop = asyncio.get_running_loop()
            while True:
                text = await loop.run_in_executor(None, sys.stdin.readline)
                if not text or not run_command(cart, text.strip()):
                    break
        await documents.close()


if __name__ == "__main__":
    asyncio.run(main())
