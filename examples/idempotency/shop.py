"""A shop's payment task, in two versions: one that charges twice when the queue delivers
a job again after a crash (at-least-once delivery), and the fixed one.

The "card charge" is a row in the shop's own SQLite ledger: that is the effect the customer
sees, and the thing that must happen once per order.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from aurora_log import Context


class Ledger:
    """The shop's own store (not the queue's): charges, and the idempotency keys already
    used. One connection, autocommit off: ``with self.db:`` is one transaction."""

    def __init__(self, path: Path):
        self.db = sqlite3.connect(path, isolation_level="DEFERRED")
        with self.db:
            self.db.execute("CREATE TABLE IF NOT EXISTS charges ("
                            "id INTEGER PRIMARY KEY AUTOINCREMENT, order_id TEXT NOT NULL, "
                            "amount_cents INTEGER NOT NULL)")
            self.db.execute("CREATE TABLE IF NOT EXISTS idempotency_keys ("
                            "key TEXT PRIMARY KEY, charge_id INTEGER NOT NULL)")

    def charge(self, order_id: str, amount_cents: int) -> int:
        """Charge the card: one new ledger row per call."""
        with self.db:
            cur = self.db.execute("INSERT INTO charges (order_id, amount_cents) VALUES (?, ?)",
                                  (order_id, amount_cents))
            return int(cur.lastrowid)

    def charge_once(self, key: str, order_id: str, amount_cents: int) -> int:
        """Charge unless ``key`` was used: the charge and its key commit together, so a
        retry after a crash at any point either finds the key or charges for the first
        time."""
        with self.db:
            row = self.db.execute("SELECT charge_id FROM idempotency_keys WHERE key = ?",
                                  (key,)).fetchone()
            if row is not None:
                return int(row[0])
            cur = self.db.execute("INSERT INTO charges (order_id, amount_cents) VALUES (?, ?)",
                                  (order_id, amount_cents))
            self.db.execute("INSERT INTO idempotency_keys (key, charge_id) VALUES (?, ?)",
                            (key, cur.lastrowid))
            return int(cur.lastrowid)

    def charged_orders(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT order_id FROM charges ORDER BY id")]

    def close(self) -> None:
        self.db.close()


def register_unsafe(q, ledger: Ledger):
    """The bug: a redelivered job charges again."""
    @q.task(name="charge", context=True)
    def charge(ctx: Context, order_id: str, amount_cents: int) -> dict:
        charge_id = ledger.charge(order_id, amount_cents)
        ctx.checkpoint("charged")          # the card is charged; the job is not complete yet
        return {"charge_id": charge_id}
    return charge


def register_safe(q, ledger: Ledger):
    """The fix: an idempotency key per order, in the shop's own store."""
    @q.task(name="charge", context=True)
    def charge(ctx: Context, order_id: str, amount_cents: int) -> dict:
        charge_id = ledger.charge_once(f"charge:{order_id}", order_id, amount_cents)
        ctx.checkpoint("charged")
        return {"charge_id": charge_id}
    return charge
