"""SqlStore: the Store contract written once, over :mod:`storage.db`'s narrow SQL seam.

Every stock change is a single conditional statement evaluated by the database; the Python side
only decides *which* statement to run. See :mod:`storage.base` for the guarantees.
"""

from __future__ import annotations

from storage.db import Database
from storage.sql_api_keys import ApiKeySql
from storage.sql_audit import AuditSql
from storage.sql_behaviour import BehaviourSql
from storage.sql_carts import CartSql, DecodedCarts
from storage.sql_catalog import CatalogSql
from storage.sql_core import now_us
from storage.sql_parts import PartsSql
from storage.sql_privacy import PrivacySql
from storage.sql_reservations import ReservationSql
from storage.sql_reviews import ReviewSql
from storage.sql_tickets import TicketSql
from storage.sql_webhooks import WebhookSql


class SqlStore(
    CatalogSql,
    PartsSql,  # (a ReservationSql: before it)
    ReservationSql,
    CartSql,
    ReviewSql,
    TicketSql,
    ApiKeySql,
    PrivacySql,
    AuditSql,
    WebhookSql,
    BehaviourSql,
):
    """The Store (storage.base) on a SQL database: catalog, stock, reservations, carts, reviews, schools'
    parts requests and the outbox, each in its own module, over one writing-transaction core
    (storage.sql_core)."""

    def __init__(self, db: Database, *, hand_over_outbox: bool = False, region: str = "default") -> None:
        super().__init__(db, hand_over_outbox=hand_over_outbox, region=region)
        self.decoded_carts = DecodedCarts()


__all__ = ["SqlStore", "now_us"]
