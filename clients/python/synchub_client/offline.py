"""The device's durable side: replicas and their unacknowledged edits in one SQLite file.

Write-ahead: an edit's delta goes into ``outbox`` and the replica's new state into ``documents`` in one
transaction (``synchronous=FULL``), committed before anything is shipped; a row leaves ``outbox`` only
when the hub has acknowledged its mutation id. A process killed at any point restarts with every edit
it made either acknowledged or still queued under the same mutation id — which the hub applies once
(a second push of it is answered ``duplicate``). Replica ids are minted here and never reused.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    kind TEXT NOT NULL, doc_id TEXT NOT NULL, replica TEXT NOT NULL, state BLOB NOT NULL,
    status TEXT, version INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (kind, doc_id));
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, doc_id TEXT NOT NULL,
    mutation_id TEXT NOT NULL UNIQUE, delta BLOB NOT NULL, op TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS refused (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, doc_id TEXT NOT NULL,
    mutation_id TEXT NOT NULL, code TEXT NOT NULL, message TEXT NOT NULL, op TEXT NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Pending:
    """An edit not yet acknowledged: its mutation id, its delta (MessagePack) and the op that made it."""

    mutation_id: str
    delta: bytes
    op: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StoredDocument:
    replica: str
    state: bytes
    status: str | None
    version: int


@dataclass(frozen=True, slots=True)
class RefusedEdit:
    """An edit the hub refused (``code``: ``unknown_sku``, ``quantity_out_of_range``, …): it never
    became part of the document."""

    mutation_id: str
    code: str
    message: str
    op: dict[str, Any]


class OfflineStore:
    """One SQLite file per device (``":memory:"`` for a device that forgets)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        row = self._db.execute("SELECT value FROM meta WHERE key = 'device'").fetchone()
        if row is None:
            self.device = "py-" + uuid.uuid4().hex[:10]
            self._db.execute("INSERT INTO meta (key, value) VALUES ('device', ?)", (self.device,))
        else:
            self.device = str(row[0])

    def close(self) -> None:
        self._db.close()

    def _transaction(self, work: Any) -> Any:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = work()
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result

    def new_replica(self) -> str:
        """A replica id no replica of this device (or any other) had."""
        return f"{self.device}-{uuid.uuid4().hex[:12]}"

    def load(self, kind: str, doc_id: str) -> StoredDocument | None:
        row = self._db.execute(
            "SELECT replica, state, status, version FROM documents WHERE kind = ? AND doc_id = ?",
            (kind, doc_id),
        ).fetchone()
        return StoredDocument(row[0], bytes(row[1]), row[2], int(row[3])) if row else None

    def create(self, kind: str, doc_id: str, replica: str, state: bytes) -> None:
        self._transaction(
            lambda: self._db.execute(
                "INSERT OR IGNORE INTO documents (kind, doc_id, replica, state) VALUES (?, ?, ?, ?)",
                (kind, doc_id, replica, state),
            )
        )

    def doc_ids(self, kind: str) -> list[str]:
        return [
            r[0]
            for r in self._db.execute("SELECT doc_id FROM documents WHERE kind = ? ORDER BY doc_id", (kind,))
        ]

    def record_edit(self, kind: str, doc_id: str, state: bytes, delta: bytes, op: dict[str, Any]) -> str:
        """Queue an edit and store the replica's state after it, atomically; returns its mutation id."""

        def work() -> str:
            row = self._db.execute(
                "SELECT replica FROM documents WHERE kind = ? AND doc_id = ?", (kind, doc_id)
            ).fetchone()
            counter = self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('mutations', '1') "
                "ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1 RETURNING value"
            ).fetchone()[0]
            mutation_id = f"{row[0]}-m{counter}"
            self._db.execute(
                "INSERT INTO outbox (kind, doc_id, mutation_id, delta, op) VALUES (?, ?, ?, ?, ?)",
                (kind, doc_id, mutation_id, delta, json.dumps(op)),
            )
            self._db.execute(
                "UPDATE documents SET state = ? WHERE kind = ? AND doc_id = ?", (state, kind, doc_id)
            )
            return mutation_id

        result: str = self._transaction(work)
        return result

    def save(self, kind: str, doc_id: str, state: bytes, status: str | None, version: int) -> None:
        self._transaction(
            lambda: self._db.execute(
                "UPDATE documents SET state = ?, status = ?, version = ? WHERE kind = ? AND doc_id = ?",
                (state, status, version, kind, doc_id),
            )
        )

    def replace(self, kind: str, doc_id: str, replica: str, state: bytes) -> None:
        """A rebuilt replica: a new replica id and the state taken from the hub."""
        self._transaction(
            lambda: self._db.execute(
                "UPDATE documents SET replica = ?, state = ? WHERE kind = ? AND doc_id = ?",
                (replica, state, kind, doc_id),
            )
        )

    def pending(self, kind: str, doc_id: str, limit: int = 1000) -> list[Pending]:
        rows = self._db.execute(
            "SELECT mutation_id, delta, op FROM outbox WHERE kind = ? AND doc_id = ? ORDER BY seq LIMIT ?",
            (kind, doc_id, limit),
        ).fetchall()
        return [Pending(r[0], bytes(r[1]), json.loads(r[2])) for r in rows]

    def pending_count(self, kind: str | None = None, doc_id: str | None = None) -> int:
        if kind is None:
            return int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])
        return int(
            self._db.execute(
                "SELECT count(*) FROM outbox WHERE kind = ? AND doc_id = ?", (kind, doc_id)
            ).fetchone()[0]
        )

    def acknowledge(self, mutation_ids: list[str]) -> None:
        if mutation_ids:
            self._transaction(
                lambda: self._db.executemany(
                    "DELETE FROM outbox WHERE mutation_id = ?", [(m,) for m in mutation_ids]
                )
            )

    def refuse(self, kind: str, doc_id: str, mutation_id: str, code: str, message: str) -> None:
        def work() -> None:
            row = self._db.execute("SELECT op FROM outbox WHERE mutation_id = ?", (mutation_id,)).fetchone()
            self._db.execute("DELETE FROM outbox WHERE mutation_id = ?", (mutation_id,))
            self._db.execute(
                "INSERT INTO refused (kind, doc_id, mutation_id, code, message, op)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (kind, doc_id, mutation_id, code, message, row[0] if row else "{}"),
            )

        self._transaction(work)

    def refused(self, kind: str, doc_id: str) -> list[RefusedEdit]:
        rows = self._db.execute(
            "SELECT mutation_id, code, message, op FROM refused WHERE kind = ? AND doc_id = ? ORDER BY seq",
            (kind, doc_id),
        ).fetchall()
        return [RefusedEdit(r[0], r[1], r[2], json.loads(r[3])) for r in rows]
