"""The bulk form of enqueue_many, shared by both backends: argument checks and encoding.

``q.enqueue_many(job_type, payloads, **options)`` adds one job per payload dict, all of
the same job type and options, without a ``Job`` object per payload. ``bulk_request``
checks everything (TypeError/ValueError before anything is written) and encodes the
payloads; each backend then writes the batch its own way.

Payloads are checked and encoded at C speed where they allow it: the common batch, dicts
of str keys and scalar values with no float, is checked with three passes of C-level
iteration over all of them and encoded by msgspec (the canonical bytes, see
``job.encode_payload``); anything else goes through ``encode_payload`` one by one, which
names the culprit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from itertools import chain
from typing import Any, NamedTuple

from .job import (DEFAULT_LEASE_SECONDS, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_SECONDS,
                  MAX_DUE_MS, MAX_UNIQUE_KEY_CHARS, JobPriority, check_name,
                  check_retries, check_seconds, check_text, encode_payload, to_ms)
from . import job as _job

__all__ = ["BulkRequest", "bulk_request", "check_bulk_call", "encode_payloads", "BULK_OPTIONS"]

# the options of the bulk form (keyword-only), besides durable
BULK_OPTIONS = ("priority", "queue", "max_retries", "timeout_seconds", "lease_duration",
                "scheduled_at", "unique_keys")

_FLAT = frozenset((str, int, bool, type(None)))   # float-free scalars: the fast encoder's
_DICT_ONLY = frozenset((dict,))
_is_str = str.__instancecheck__


class BulkRequest(NamedTuple):
    """A checked bulk enqueue: the fields every job of the batch shares, and per job its
    encoded payload (and unique key, if any were given)."""
    job_type: str
    queue: str
    priority: int                  # 1..4
    max_retries: int
    timeout_ms: int | None         # None = no timeout
    lease_ms: int
    scheduled_ms: int | None       # None = due at the enqueue
    payloads: list[bytes]          # canonical JSON, one per job
    unique_keys: list[str | None] | None


def _priority(value: Any) -> int:
    if type(value) is JobPriority:
        return int(value)
    return int(_job._check_priority(value))


def encode_payloads(payloads: Sequence[Any], limit: int) -> list[bytes]:
    """Every payload as stored (canonical compact JSON), or TypeError/ValueError naming
    the first bad one (by its index). ValueError for one over ``limit`` bytes."""
    out: list[bytes] | None = None
    fast = _job._fast_encode
    if (fast is not None and _DICT_ONLY.issuperset(map(type, payloads))
            and all(map(_is_str, chain.from_iterable(payloads)))
            and _FLAT.issuperset(map(type, chain.from_iterable(map(dict.values, payloads))))):
        try:
            out = list(map(fast, payloads))
        except _job._FAST_ERRORS:
            out = None                       # a lone surrogate: the slow path names it
    if out is None:
        out = []
        for i, p in enumerate(payloads):
            try:
                out.append(encode_payload(p))
            except (TypeError, ValueError) as e:
                raise type(e)(f"payloads[{i}]: {e}") from None
    if out and max(map(len, out)) > limit:
        i = next(i for i, b in enumerate(out) if len(b) > limit)
        raise ValueError(f"payloads[{i}] is {len(out[i])} bytes encoded; the limit is "
                         f"{limit} (max_payload_bytes)")
    return out


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def bulk_request(job_type: Any, payloads: Any, limit: int, *,
                 priority: Any = JobPriority.NORMAL, queue: Any = "default",
                 max_retries: Any = DEFAULT_MAX_RETRIES,
                 timeout_seconds: Any = DEFAULT_TIMEOUT_SECONDS,
                 lease_duration: Any = DEFAULT_LEASE_SECONDS,
                 scheduled_at: Any = None, unique_keys: Any = None) -> BulkRequest:
    """Check the bulk form's arguments (the same rules as the Job builders) and encode the
    payloads. TypeError/ValueError; the caller writes nothing before this returns."""
    check_name(job_type, "job_type")
    if isinstance(payloads, (str, bytes, bytearray, Mapping)):
        raise TypeError(f"payloads must be an iterable of payload dicts, not one "
                        f"{type(payloads).__name__}")
    if not isinstance(payloads, Iterable):
        raise TypeError(f"payloads must be an iterable of payload dicts, not "
                        f"{type(payloads).__name__}")
    plist = payloads if type(payloads) is list else list(payloads)
    queue = "default" if queue == "default" and type(queue) is str \
        else check_name(queue, "queue")
    prio = _priority(priority)
    if max_retries is not DEFAULT_MAX_RETRIES:
        check_retries(max_retries, "max_retries")
    timeout_ms: int | None = 300_000
    if timeout_seconds is not DEFAULT_TIMEOUT_SECONDS:
        t = check_seconds(timeout_seconds, "timeout_seconds", allow_none=True)
        timeout_ms = None if t is None else _ms(t)
    lease_ms = 30_000
    if lease_duration is not DEFAULT_LEASE_SECONDS:
        lease_ms = _ms(check_seconds(lease_duration, "lease_duration"))
    sched = None
    if scheduled_at is not None:
        if not isinstance(scheduled_at, datetime):
            raise TypeError(f"scheduled_at must be a timezone-aware datetime, not "
                            f"{type(scheduled_at).__name__}")
        sched = to_ms(scheduled_at, "scheduled_at")
        if not 0 <= sched <= MAX_DUE_MS:
            raise ValueError(f"scheduled_at {scheduled_at} is out of range")
    keys: list[str | None] | None = None
    if unique_keys is not None:
        if isinstance(unique_keys, (str, bytes, Mapping)) or \
                not isinstance(unique_keys, Iterable):
            raise TypeError("unique_keys must be a sequence of str or None, one per payload")
        keys = list(unique_keys)
        if len(keys) != len(plist):
            raise ValueError(f"unique_keys has {len(keys)} entries for {len(plist)} payloads")
        for i, k in enumerate(keys):
            if k is not None:
                check_text(k, f"unique_keys[{i}]", MAX_UNIQUE_KEY_CHARS)
        if all(k is None for k in keys):
            keys = None
    encoded = encode_payloads(plist, limit)
    return BulkRequest(job_type, queue, prio, max_retries, timeout_ms, lease_ms, sched,
                       encoded, keys)


def check_bulk_call(jobs_or_type: Any, payloads: Any, options: Mapping[str, Any]) -> bool:
    """Which form of enqueue_many a call is: True for the bulk form (a job type str first,
    then payloads), False for the list of Jobs. TypeError for a mix: payloads or bulk
    options with Jobs, a job type without payloads, an unknown option."""
    unknown = set(options) - set(BULK_OPTIONS)
    if unknown:
        raise TypeError(f"enqueue_many got unexpected keyword argument(s) "
                        f"{', '.join(sorted(unknown))}")
    if isinstance(jobs_or_type, str):
        if payloads is None:
            raise TypeError("enqueue_many(job_type, payloads, ...): the payloads are missing "
                            "(for Job objects pass a list of them as the only argument)")
        return True
    if payloads is not None or options:
        raise TypeError("payloads and job options belong to the bulk form "
                        "enqueue_many(job_type, payloads, ...), whose first argument is a "
                        "job type str; a list of Jobs carries its own options")
    return False
