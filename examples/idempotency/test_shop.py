"""The crash harness finds the double charge in a few lines, and passes the fixed task.

    pytest examples/idempotency
"""

import uuid

import pytest
from shop import Ledger, register_safe, register_unsafe

from aurora_log.testing import crash_test, exactly_once

ORDERS = {"A-1": 1250, "A-2": 990}


def shop(tmp_path, register):
    """A scenario: a fresh ledger, the charge task on the queue, one job per order."""

    def scenario(q):
        ledger = Ledger(tmp_path / f"ledger-{uuid.uuid4().hex}.db")
        charge = register(q, ledger)
        for order_id, cents in ORDERS.items():
            charge.enqueue(order_id, cents)
        return ledger
    return scenario


def each_order_charged_once(q, ledger):
    charged = ledger.charged_orders()
    exactly_once(charged, "charge of order")
    assert sorted(set(charged)) == sorted(ORDERS), f"orders not charged: {charged}"


def test_the_fixed_task_charges_once_whatever_crashes(tmp_path):
    crash_test(shop(tmp_path, register_safe), each_order_charged_once, cleanup=Ledger.close)


def test_the_naive_task_is_caught_charging_twice(tmp_path):
    with pytest.raises(AssertionError, match="duplicated effect: charge of order 'A-1'"):
        crash_test(shop(tmp_path, register_unsafe), each_order_charged_once,
                   cleanup=Ledger.close)
