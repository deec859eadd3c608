"""synchub's Python client: live channels over WebSocket, SSE or long-poll, and offline documents.

::

    async with Client(["http://node-a:8080", "http://node-b:8080"], token=token) as client:
        stock = Inventory(client, "eu")
        await stock.start()
        carts = Documents(client, "device.sqlite3")
        cart = carts.cart(cart_id)
        cart.add("TEA-001", 2)          # durable at once, shipped when connected
        await cart.wait_synced()
"""

from synchub_client.backoff import Backoff
from synchub_client.client import Client, Subscription
from synchub_client.documents import CartDocument, Change, Document, Documents, ReviewDocument
from synchub_client.errors import (
    ClientStopped,
    ConnectionLost,
    HttpError,
    NotConnected,
    RequestError,
    SubscriptionError,
    SyncHubError,
)
from synchub_client.events import Ended, Event, Resync, State, Transport
from synchub_client.inventory import Inventory, StockChange, StockLevel
from synchub_client.offline import OfflineStore, RefusedEdit

__version__ = "0.1.0"

__all__ = [
    "Backoff",
    "CartDocument",
    "Change",
    "Client",
    "ClientStopped",
    "ConnectionLost",
    "Document",
    "Documents",
    "Ended",
    "Event",
    "HttpError",
    "Inventory",
    "NotConnected",
    "OfflineStore",
    "RefusedEdit",
    "RequestError",
    "Resync",
    "ReviewDocument",
    "State",
    "StockChange",
    "StockLevel",
    "Subscription",
    "SubscriptionError",
    "SyncHubError",
    "Transport",
]
