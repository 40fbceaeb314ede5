"""SQLite storage: orders and a transactional outbox written in the same transaction."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    item TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',   -- pending | published | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_status ON outbox(status);
"""


class Store:
    """One connection per thread; SQLite serialises writers itself."""

    def __init__(self, path: str):
        self.path = path
        self._local = threading.local()
        self._connect().executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.row_factory = sqlite3.Row
            self._local.connection = connection
        return connection

    def create_order(self, item: str, quantity: int) -> dict[str, Any]:
        """Insert the order and its OrderCreated event atomically (the outbox pattern)."""
        db = self._connect()
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            cursor = db.execute("INSERT INTO orders (item, quantity, created_at) VALUES (?, ?, ?)",
                                (item, quantity, now))
            order = {"id": cursor.lastrowid, "item": item, "quantity": quantity, "created_at": now}
            db.execute("INSERT INTO outbox (topic, payload, created_at) VALUES (?, ?, ?)",
                       ("order.created", json.dumps(order), now))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return order

    def get_order(self, order_id: int) -> dict[str, Any] | None:
        row = self._connect().execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
        return dict(row) if row else None

    def list_orders(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self._connect().execute(
            "SELECT * FROM orders ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [dict(row) for row in rows]

    def pending_events(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._connect().execute(
            "SELECT * FROM outbox WHERE status = 'pending' ORDER BY id LIMIT ?",
            (limit,)).fetchall()
        return [dict(row) for row in rows]

    def mark_published(self, event_id: int) -> None:
        self._connect().execute("UPDATE outbox SET status = 'published', attempts = attempts + 1 "
                                "WHERE id = ?", (event_id,))

    def mark_attempt_failed(self, event_id: int, error: str, max_attempts: int) -> None:
        self._connect().execute(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?, "
            "status = CASE WHEN attempts + 1 >= ? THEN 'failed' ELSE 'pending' END WHERE id = ?",
            (error, max_attempts, event_id))

    def outbox_counts(self) -> dict[str, int]:
        rows = self._connect().execute(
            "SELECT status, COUNT(*) AS n FROM outbox GROUP BY status").fetchall()
        counts = {"pending": 0, "published": 0, "failed": 0}
        counts.update({row["status"]: row["n"] for row in rows})
        return counts
