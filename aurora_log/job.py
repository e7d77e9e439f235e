"""The job model: ``Job``, ``JobPriority``, ``JobStatus`` (parity with ``aurora_db::workers``).

Field names, defaults and builder names follow the Rust seed:

==================  ==========================  =========================================
field               default                     notes
==================  ==========================  =========================================
id                  a new UUID4 string          any non-empty str of <= 200 chars accepted
job_type            (required)                  routes the job to its handler
payload             ``{}``                      dict[str, JSON value]
priority            ``JobPriority.NORMAL``      LOW=1 < NORMAL=2 < HIGH=3 < CRITICAL=4
status              ``JobStatus.PENDING``
max_retries         3                           retries *after* the first attempt (0 = never)
retry_count         0                           retries used so far
created_at          now (UTC, ms precision)
scheduled_at        None                        "not before"; also the next retry time
started_at          None                        start of the current/last attempt
completed_at        None
timeout_seconds     300                         None = no timeout
last_heartbeat      None                        a datetime here (the seed used a u64)
lease_duration      30                          seconds without a heartbeat before reaping
==================  ==========================  =========================================

Our additions: ``queue`` ("default"), ``unique_key``, and, on jobs the queue hands out,
``token`` (the attempt token), ``lease_deadline``, ``worker_id``, ``error``, ``result``,
``progress``, ``progress_message``, ``cancel_requested``.

The seed's scheduling builder is ``scheduled_at(at)``; in Python a method cannot share the
name of the ``scheduled_at`` field, so it is called :meth:`Job.schedule_at`.

All times in the API are timezone-aware UTC ``datetime`` objects, kept at millisecond
precision (the precision of the log records), so a job read back compares equal.

Retry backoff (:meth:`Job.next_retry_delay`)::

    delay = min(cap, base * 2 ** retry_count)          base = 5 s, cap = 1 h by default
    delay = delay * (1 - jitter * U[0, 1))               only when jitter > 0 (0 <= jitter <= 1)

so the first retry waits 5 s, the second 10 s, the third 20 s, ... never more than ``cap``.
"""

from __future__ import annotations

import enum
import json
import math
import os
import random
import time
from datetime import datetime, timedelta, UTC
from typing import Any, Literal, NamedTuple, NoReturn, overload
from collections.abc import Callable, Mapping

__all__ = [
    "Job", "JobPriority", "JobStatus", "STATUS_CODES", "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT_SECONDS", "DEFAULT_LEASE_SECONDS", "DEFAULT_RETRY_BASE", "DEFAULT_RETRY_CAP",
    "MAX_NAME_CHARS", "MAX_DUE_MS",
    "encode_payload", "encode_json", "decode_json", "to_ms", "from_ms", "now_ms",
    "check_name", "check_text", "new_id", "new_ids",
]

DEFAULT_MAX_RETRIES = 3
# the latest due time a job may have (year ~6429): the local engine's claim-order keys hold it
# in 47 bits, and every backend keeps the same limit so a job moves between them unchanged
MAX_DUE_MS = (1 << 47) - 1
DEFAULT_TIMEOUT_SECONDS = 300
DEFAULT_LEASE_SECONDS = 30
DEFAULT_RETRY_BASE = 5.0
DEFAULT_RETRY_CAP = 3600.0
MAX_NAME_CHARS = 200           # job_type, queue, worker id, job id
MAX_UNIQUE_KEY_CHARS = 1024
MAX_RETRIES_LIMIT = 2**32 - 1  # the seed's u32
MAX_SECONDS = 4_294_967  # ~49.7 days: leases/timeouts are kept as u32 milliseconds in memory

UTC = UTC
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


class JobPriority(enum.IntEnum):
    """Higher runs first."""
    LOW = 1
    NORMAL = 2
    HIGH = 3
    CRITICAL = 4


class JobStatus(str, enum.Enum):  # noqa: UP042 - StrEnum would be a (tiny) API change
    """A job's lifecycle state. ``FAILED`` means "failed, a retry is pending" (the job carries
    ``error`` and ``retry_count``); ``DEAD_LETTER`` means retries are spent (carries ``error``);
    ``CANCELLED`` is our addition."""
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    DEAD_LETTER = "dead_letter"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

    @property
    def code(self) -> int:
        return _STATUS_CODE[self]

    @classmethod
    def from_code(cls, code: int) -> JobStatus:
        return _CODE_STATUS[code]

    @property
    def is_finished(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.DEAD_LETTER, JobStatus.CANCELLED)


class StatusCodes(NamedTuple):
    """The small integer code of each JobStatus, as records and the state's fold store it
    (stable: they are on disk). Written here and nowhere else: the engine's hot paths
    compare plain ints, so they unpack ``STATUS_CODES`` (field order = JobStatus order)
    instead of repeating the numbers."""
    PENDING: int = 1
    RUNNING: int = 2
    COMPLETED: int = 3
    FAILED: int = 4
    DEAD_LETTER: int = 5
    CANCELLED: int = 6


STATUS_CODES = StatusCodes()
_STATUS_CODE: dict[JobStatus, int] = {s: getattr(STATUS_CODES, s.name) for s in JobStatus}
_CODE_STATUS = {v: k for k, v in _STATUS_CODE.items()}


# --------------------------------------------------------------------------- time helpers

def to_ms(dt: datetime, what: str = "time") -> int:
    """Milliseconds since the Unix epoch of a timezone-aware datetime (ValueError if naive)."""
    if not isinstance(dt, datetime):
        raise TypeError(f"{what} must be a timezone-aware datetime, not {type(dt).__name__}")
    if dt.tzinfo is None or dt.tzinfo.utcoffset(dt) is None:
        raise ValueError(f"{what} must be timezone-aware (use datetime.now(timezone.utc))")
    return (dt - EPOCH) // _MS


def from_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def now_ms() -> int:
    return (datetime.now(UTC) - EPOCH) // _MS


def _norm_dt(dt: datetime, what: str) -> datetime:
    return from_ms(to_ms(dt, what))


_last_now: tuple[int, datetime] = (-1, EPOCH)


def _now(now: datetime | None) -> datetime:
    global _last_now
    if now is None:
        ms = time.time_ns() // 1_000_000
        last = _last_now
        if last[0] == ms:
            return last[1]          # datetimes are immutable: share one per millisecond
        d = from_ms(ms)
        _last_now = (ms, d)
        return d
    return _norm_dt(now, "now")


# --------------------------------------------------------------------------- validation

_CONTROL = frozenset(chr(c) for c in list(range(32)) + list(range(127, 160)))


def check_text(value: Any, what: str, max_chars: int) -> str:
    """A non-empty str of at most max_chars without control characters."""
    if type(value) is str and value.isprintable() and 0 < len(value) <= max_chars:
        return value    # fast path: printable excludes control characters and surrogates
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    if len(value) > max_chars:
        raise ValueError(f"{what} is {len(value)} characters long; the limit is {max_chars}")
    if not _CONTROL.isdisjoint(value):
        raise ValueError(f"{what} {value!r} contains a control character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} {value!r} is not valid Unicode (lone surrogate)") from None
    return value


_GOOD_NAMES: set[str] = set()   # names already validated (job types and queues repeat)


def check_name(value: Any, what: str) -> str:
    """job_type / queue names: also no path separators and no leading dot, so a name can
    never be turned into a path outside the store by a tool that files things by name."""
    if type(value) is str and value in _GOOD_NAMES:
        return value
    name = check_text(value, what, MAX_NAME_CHARS)
    if "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"{what} {name!r} must not contain '/' or '\\' or start with '.'")
    if name != name.strip():
        raise ValueError(f"{what} {name!r} must not start or end with whitespace")
    if len(_GOOD_NAMES) < 10_000:
        _GOOD_NAMES.add(name)
    return name


_SCALARS = frozenset((str, int, bool, type(None)))
_is_str = str.__instancecheck__    # a str subclass key encodes as a str: fine
_MAX_DEPTH = 500


def _json_ok(v: Any, depth: int = 0) -> bool:
    """Fast check (no messages): plain JSON with str keys and finite floats."""
    t = type(v)
    if t in _SCALARS:
        return True
    if t is float:
        return math.isfinite(v)
    if depth > _MAX_DEPTH:
        return False
    if t is dict:
        # the common payload, a flat dict of str keys and scalar values: checked at C speed
        if _SCALARS.issuperset(map(type, v.values())) and all(map(_is_str, v)):
            return True
        for k, x in v.items():
            if type(k) is not str:
                return False
            if type(x) not in _SCALARS and not _json_ok(x, depth + 1):
                return False
        return True
    if t is list:
        for x in v:
            if type(x) not in _SCALARS and not _json_ok(x, depth + 1):
                return False
        return True
    return False


def _check_json(value: Any, path: str) -> None:
    """Raise TypeError/ValueError unless value is plain JSON (str keys, finite floats)."""
    if _json_ok(value):
        return
    stack = [(value, path, 0)]          # slow path: find the culprit for the message
    while stack:
        v, p, depth = stack.pop()
        t = type(v)
        if t in _SCALARS:
            continue
        if t is float:
            if not math.isfinite(v):
                raise ValueError(f"{p}: {v!r} is not a JSON number (NaN/Infinity)")
            continue
        if depth > _MAX_DEPTH and t in (dict, list):
            raise ValueError(f"{path} is nested more than {_MAX_DEPTH} levels deep "
                             "(or contains a reference cycle)")
        if t is dict:
            for k, item in v.items():
                if type(k) is not str:
                    raise TypeError(f"{p}: key {k!r} is {type(k).__name__}; JSON keys must be str")
                stack.append((item, f"{p}[{k!r}]", depth + 1))
            continue
        if t is list:
            for i, item in enumerate(v):
                stack.append((item, f"{p}[{i}]", depth + 1))
            continue
        raise TypeError(f"{p}: {type(v).__name__} value {v!r:.80} is not JSON "
                        "(use dict, list, str, int, float, bool or None)")
    raise ValueError(f"{path} is not plain JSON")


_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                            check_circular=True)
_decode = json.JSONDecoder().decode


def _not_json(o: object) -> NoReturn:
    raise TypeError(f"{type(o).__name__} is not JSON")


try:  # the C encoder, made once (JSONEncoder.encode builds one per call for containers)
    # the C halves of json.encoder are private: typeshed does not know them
    from json.encoder import (  # type: ignore[attr-defined]
        c_encode_basestring as _c_str, c_make_encoder as _c_make)
    _c_encode = _c_make(None, _not_json, _c_str, None, ":", ",", False, False, False)
except (ImportError, TypeError):  # pragma: no cover - pure-Python json
    _c_encode = None


def encode_json(value: Any, what: str = "value") -> bytes:
    """Validate and encode any JSON value compactly (UTF-8, no NaN)."""
    _check_json(value, what)    # also bounds nesting (so no cycles reach the encoder)
    try:
        if _c_encode is not None:
            return "".join(_c_encode(value, 0)).encode("utf-8")
        return _encoder.encode(value).encode("utf-8")
    except (UnicodeEncodeError, RecursionError) as e:
        raise ValueError(f"{what} cannot be encoded as JSON: {e}") from None


# msgspec's encoder writes the same bytes as the canonical form above for every value
# without a float (its floats differ: 1e16, 1e-5 where json writes 1e+16, 1e-05), several
# times faster. So it encodes only values _float_free() admits, and anything it refuses
# (a lone surrogate, nesting past its recursion limit) takes the canonical path, which
# says what is wrong. tests/test_payload_codec.py checks the bytes are the same.
try:
    import msgspec as _msgspec
    _fast_encode: Callable[[Any], bytes] | None = _msgspec.json.Encoder().encode
    _FAST_ERRORS: tuple[type[BaseException], ...] = (
        _msgspec.EncodeError, TypeError, ValueError, RecursionError, OverflowError)
except ImportError:  # pragma: no cover - msgspec is a dependency; json alone still works
    _fast_encode = None
    _FAST_ERRORS = ()


def _float_free(v: Any, depth: int = 0) -> bool:
    """Plain JSON (as _json_ok) without a float anywhere: what the fast encoder may
    write. The flat dict of str keys and scalar values is checked at C speed."""
    t = type(v)
    if t is dict:
        if _SCALARS.issuperset(map(type, v.values())) and all(map(_is_str, v)):
            return True
        if depth > _MAX_DEPTH:
            return False
        for k, x in v.items():
            if type(k) is not str or (type(x) not in _SCALARS
                                      and not _float_free(x, depth + 1)):
                return False
        return True
    if t is list:
        if depth > _MAX_DEPTH:
            return False
        for x in v:
            if type(x) not in _SCALARS and not _float_free(x, depth + 1):
                return False
        return True
    return t in _SCALARS


def encode_payload(payload: Any) -> bytes:
    """A payload dict as stored: compact UTF-8 JSON (the canonical form of encode_json).
    TypeError/ValueError for anything that is not plain JSON."""
    if type(payload) is not dict:
        raise TypeError(f"payload must be a dict with str keys, not {type(payload).__name__}")
    if _fast_encode is not None and _float_free(payload):
        try:
            return _fast_encode(payload)
        except _FAST_ERRORS:
            pass                                          # the canonical path decides
    if _c_encode is not None and _json_ok(payload):       # the common case, inlined
        try:
            return "".join(_c_encode(payload, 0)).encode("utf-8")
        except UnicodeEncodeError:
            pass                                          # lone surrogate: the slow path says so
    return encode_json(payload, "payload")


def decode_json(data: bytes) -> Any:
    return _decode(data.decode("utf-8"))


@overload
def check_seconds(value: Any, what: str, allow_none: Literal[False] = False) -> float: ...
@overload
def check_seconds(value: Any, what: str, allow_none: bool) -> float | None: ...


def check_seconds(value: Any, what: str, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive number of seconds, got {value!r}")
    if value > MAX_SECONDS:
        raise ValueError(f"{what} of {value!r} s is over the limit of {MAX_SECONDS} s (~49 days); "
                         "use timeout None for no timeout")
    if value * 1000 < 1:
        raise ValueError(f"{what} must be at least 1 ms, got {value!r}")
    return value


def check_retries(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not 0 <= value <= MAX_RETRIES_LIMIT:
        raise ValueError(f"{what} must be between 0 and {MAX_RETRIES_LIMIT}, got {value}")
    return value


def _check_priority(value: Any) -> JobPriority:
    if isinstance(value, JobPriority):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"priority must be a JobPriority, not {type(value).__name__}")
    try:
        return JobPriority[value.upper()] if isinstance(value, str) else JobPriority(value)
    except (KeyError, ValueError):
        raise ValueError(f"unknown priority {value!r} "
                         "(LOW=1, NORMAL=2, HIGH=3, CRITICAL=4)") from None


def _check_status(value: Any) -> JobStatus:
    if isinstance(value, JobStatus):
        return value
    try:
        return JobStatus(value)
    except ValueError:
        raise ValueError(f"unknown status {value!r}") from None


# --------------------------------------------------------------------------- ids

_ids: list[str] = []
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def _more_ids() -> None:
    h = os.urandom(4096).hex()
    # version 4 and the RFC 4122 variant bits
    _ids.extend([f"{h[i:i + 8]}-{h[i + 8:i + 12]}-4{h[i + 13:i + 16]}-{_VARIANT[h[i + 16]]}"
                 f"{h[i + 17:i + 20]}-{h[i + 20:i + 32]}" for i in range(0, 8192, 32)])


def new_id() -> str:
    """A random (version 4) UUID string. Cheaper than str(uuid.uuid4()): the random bytes
    come from the OS 4 KiB (256 ids) at a time. list.pop is atomic under the GIL, so no
    lock: two threads that find the list empty both refill it, which is harmless."""
    while True:
        try:
            return _ids.pop()
        except IndexError:
            _more_ids()


_MAX_RUN = 1 << 31


def new_ids(n: int) -> list[str]:
    """``n`` job ids for one batch, from one random draw: UUIDs in the version 7 layout
    (RFC 9562): 48 bits of Unix time in ms, the version, 12 random bits (rand_a), the
    variant, then rand_b = 30 random bits and a 32-bit counter that starts at a random
    value below 2**31 and counts up through the batch. So the ids of one batch sort in
    batch order, and two batches drawn in the same millisecond (by this process or any
    other, before or after a restart) share an id only if 73 random bits line up (rand_a,
    rand_b's 30 bits, and counter ranges that overlap): about n1 * n2 / 2**73. One
    getrandom call per batch instead of the per-id cost of new_id(); nothing is cached, so
    a forked child draws its own."""
    if n <= 0:
        return []
    if n >= _MAX_RUN:
        raise ValueError(f"at most {_MAX_RUN - 1} ids per batch, not {n}")
    r = int.from_bytes(os.urandom(10), "little")
    rand_a = r & 0xFFF
    rand_b = (r >> 12) & 0x3FFFFFFF                     # the 30 random bits of rand_b
    start = (r >> 42) & (_MAX_RUN - 1)
    t = f"{(time.time_ns() // 1_000_000) & 0xFFFFFFFFFFFF:012x}"
    prefix = f"{t[:8]}-{t[8:]}-7{rand_a:03x}-{0x8000 | rand_b >> 16:04x}-{rand_b & 0xFFFF:04x}"
    return list(map(f"{prefix}%08x".__mod__, range(start, start + n)))


# a forked child must not hand out the ids its parent (and its siblings) still hold
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ids.clear)


# --------------------------------------------------------------------------- Job

_FIELDS = ("id", "job_type", "payload", "priority", "status", "max_retries", "retry_count",
           "created_at", "scheduled_at", "started_at", "completed_at", "timeout_seconds",
           "last_heartbeat", "lease_duration",
           # ours
           "queue", "unique_key", "token", "lease_deadline", "worker_id", "error", "result",
           "progress", "progress_message", "cancel_requested")


class Job:
    """A durable background job. Build one with ``Job.new("send_email").add_field(...)`` (the
    seed's builders, each returning the job so calls chain) or with keywords:
    ``Job("send_email", payload={...}, priority=JobPriority.HIGH)``.

    Every builder validates at once and raises TypeError/ValueError with a clear message.
    """

    # _deps: (parent ids, on_parent_failure) set by after(); _auto_id: the id new_id() drew
    # for this Job (None if the caller chose one: a shared store's enqueue needs no catch-up
    # for a job whose id nobody else can hold). Neither is a stored field of the job, so
    # both are kept out of _FIELDS (to_dict, ==, the state's materialisation)
    __slots__ = _FIELDS + ("_deps", "_auto_id")

    def __init__(self, job_type: str, payload: Mapping[str, Any] | None = None, *,
                 id: str | None = None,
                 priority: JobPriority | int | str = JobPriority.NORMAL,
                 status: JobStatus | str = JobStatus.PENDING,
                 max_retries: int = DEFAULT_MAX_RETRIES,
                 retry_count: int = 0,
                 created_at: datetime | None = None,
                 scheduled_at: datetime | None = None,
                 started_at: datetime | None = None,
                 completed_at: datetime | None = None,
                 timeout_seconds: float | None = DEFAULT_TIMEOUT_SECONDS,
                 last_heartbeat: datetime | None = None,
                 lease_duration: float = DEFAULT_LEASE_SECONDS,
                 queue: str = "default",
                 unique_key: str | None = None,
                 token: str | None = None,
                 lease_deadline: datetime | None = None,
                 worker_id: str | None = None,
                 error: str | None = None,
                 result: Any = None,
                 progress: float | None = None,
                 progress_message: str | None = None,
                 cancel_requested: bool = False):
        self.job_type = check_name(job_type, "job_type")
        self.id = new_id() if id is None else check_text(id, "id", MAX_NAME_CHARS)
        self._auto_id = self.id if id is None else None
        self.payload: dict[str, Any] = {}
        if payload is not None:
            self.with_payload(payload)
        # each check runs only for a value that is not the default (the common case is fast)
        self.priority = (JobPriority.NORMAL if priority is JobPriority.NORMAL
                         else _check_priority(priority))
        self.status = JobStatus.PENDING if status is JobStatus.PENDING else _check_status(status)
        self.max_retries = (DEFAULT_MAX_RETRIES if max_retries is DEFAULT_MAX_RETRIES
                            else check_retries(max_retries, "max_retries"))
        self.retry_count = (0 if type(retry_count) is int and retry_count == 0
                            else check_retries(retry_count, "retry_count"))
        self.created_at = _now(None) if created_at is None else _norm_dt(created_at, "created_at")
        self.scheduled_at = None if scheduled_at is None else _norm_dt(scheduled_at, "scheduled_at")
        self.started_at = None if started_at is None else _norm_dt(started_at, "started_at")
        self.completed_at = None if completed_at is None else _norm_dt(completed_at, "completed_at")
        self.timeout_seconds = (
            DEFAULT_TIMEOUT_SECONDS if timeout_seconds is DEFAULT_TIMEOUT_SECONDS
            else check_seconds(timeout_seconds, "timeout_seconds", allow_none=True))
        self.last_heartbeat = (None if last_heartbeat is None
                               else _norm_dt(last_heartbeat, "last_heartbeat"))
        self.lease_duration = (DEFAULT_LEASE_SECONDS if lease_duration is DEFAULT_LEASE_SECONDS
                               else check_seconds(lease_duration, "lease_duration"))
        self.queue = "default" if queue == "default" else check_name(queue, "queue")
        self.unique_key = (None if unique_key is None
                           else check_text(unique_key, "unique_key", MAX_UNIQUE_KEY_CHARS))
        self.token = token
        self.lease_deadline = lease_deadline
        self.worker_id = worker_id
        self.error = error
        self.result = result
        self.progress = progress
        self.progress_message = progress_message
        self.cancel_requested = bool(cancel_requested)

    @classmethod
    def _raw(cls) -> Job:
        """An empty instance for the state layer to fill (no validation: the state holds
        only values that were validated before they were written)."""
        return cls.__new__(cls)

    # ---- the seed's builders (each returns self) ------------------------------------

    @classmethod
    def new(cls, job_type: str) -> Job:
        """Priority NORMAL, max_retries 3, timeout 300 s, lease 30 s, status PENDING."""
        return cls(job_type)

    def with_payload(self, payload: Mapping[str, Any]) -> Job:
        """Replace the whole payload (a dict of str -> JSON value; it is copied)."""
        if type(payload) is not dict and not isinstance(payload, Mapping):
            raise TypeError(f"payload must be a dict with str keys, not {type(payload).__name__}")
        payload = dict(payload)
        if not _json_ok(payload):
            _check_json(payload, "payload")
        self.payload = payload
        return self

    def add_field(self, key: str, value: Any) -> Job:
        if not isinstance(key, str):
            raise TypeError(f"payload keys must be str, not {type(key).__name__}")
        _check_json(value, f"payload[{key!r}]")
        self.payload[key] = value
        return self

    def with_priority(self, priority: JobPriority | int | str) -> Job:
        self.priority = _check_priority(priority)
        return self

    def with_max_retries(self, max_retries: int) -> Job:
        """Retries after the first attempt: 0 means a failure goes straight to dead-letter."""
        self.max_retries = check_retries(max_retries, "max_retries")
        return self

    def with_timeout(self, seconds: float | None) -> Job:
        """A running job older than this is failed by the reaper with "timeout"; None = never."""
        self.timeout_seconds = check_seconds(seconds, "timeout_seconds", allow_none=True)
        return self

    def with_lease_duration(self, seconds: float) -> Job:
        self.lease_duration = check_seconds(seconds, "lease_duration")
        return self

    def schedule_at(self, at: datetime) -> Job:
        """Run not before ``at`` (the seed's ``scheduled_at`` builder; renamed because the
        field has that name)."""
        self.scheduled_at = _norm_dt(at, "scheduled_at")
        return self

    def with_queue(self, queue: str) -> Job:
        self.queue = check_name(queue, "queue")
        return self

    def with_unique_key(self, key: str | None) -> Job:
        """While a live job (pending, scheduled, running, waiting for a retry) has this key,
        enqueueing another job with it returns the live job's id instead."""
        self.unique_key = (None if key is None
                           else check_text(key, "unique_key", MAX_UNIQUE_KEY_CHARS))
        return self

    # ---- the seed's state helpers (``now`` defaults to the wall clock) ------------------

    def should_run(self, now: datetime | None = None) -> bool:
        """True when the job is waiting to run (pending or failed-awaiting-retry) and its
        scheduled time, if any, has come."""
        if self.status not in (JobStatus.PENDING, JobStatus.FAILED):
            return False
        return self.scheduled_at is None or self.scheduled_at <= _now(now)

    def mark_running(self, now: datetime | None = None) -> Job:
        now = _now(now)
        self.status = JobStatus.RUNNING
        self.started_at = now
        self.last_heartbeat = now
        self.lease_deadline = now + timedelta(seconds=self.lease_duration)
        return self

    def touch(self, now: datetime | None = None) -> Job:
        now = _now(now)
        self.last_heartbeat = now
        self.lease_deadline = now + timedelta(seconds=self.lease_duration)
        return self

    def is_heartbeat_expired(self, now: datetime | None = None) -> bool:
        """A running job whose last heartbeat is more than lease_duration ago. The lease
        holds *through* its deadline: expired means now > deadline."""
        if self.status is not JobStatus.RUNNING:
            return False
        last = self.last_heartbeat or self.started_at
        if last is None:
            return False
        return bool(_now(now) > last + timedelta(seconds=self.lease_duration))

    def mark_completed(self, now: datetime | None = None) -> Job:
        self.status = JobStatus.COMPLETED
        self.completed_at = _now(now)
        self.error = None
        return self

    def mark_failed(self, error: str, now: datetime | None = None, **delay_opts: Any) -> Job:
        """Record a failed attempt: FAILED with scheduled_at = now + next_retry_delay() and
        retry_count + 1 while retries remain, else DEAD_LETTER (retry_count unchanged)."""
        if not isinstance(error, str):
            raise TypeError(f"error must be a str, not {type(error).__name__}")
        now = _now(now)
        self.error = error
        self.token = None
        self.lease_deadline = None
        if self.retry_count < self.max_retries:
            self.scheduled_at = now + self.next_retry_delay(**delay_opts)
            self.retry_count += 1
            self.status = JobStatus.FAILED
        else:
            self.status = JobStatus.DEAD_LETTER
            self.completed_at = now
        return self

    def next_retry_delay(self, *, base: float = DEFAULT_RETRY_BASE, cap: float = DEFAULT_RETRY_CAP,
                         jitter: float = 0.0, rng: random.Random | None = None) -> timedelta:
        """``min(cap, base * 2**retry_count)`` seconds, reduced by up to ``jitter`` (0..1) of
        itself at random when jitter > 0. Whole milliseconds."""
        return timedelta(milliseconds=retry_delay_ms(self.retry_count, base=base, cap=cap,
                                                     jitter=jitter, rng=rng))

    # ---- conveniences ----------------------------------------------------------------

    @property
    def attempt(self) -> int:
        """1 for the first run, 2 for the first retry, ..."""
        return self.retry_count + 1

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (times as ISO 8601 strings)."""
        out = {}
        for name in _FIELDS:
            v = getattr(self, name)
            if isinstance(v, datetime):
                v = v.isoformat()
            elif isinstance(v, enum.Enum):
                v = v.name if isinstance(v, JobPriority) else v.value
            out[name] = v
        return out

    def after(self, *parents: str | Job, on_parent_failure: str = "cancel") -> Job:
        """Make this job wait for ``parents`` (ids or Jobs): it becomes claimable once every
        parent COMPLETED. A parent that ends dead-lettered or cancelled settles it:
        ``on_parent_failure="cancel"`` (default) cancels it with a reason naming the parent;
        ``"ignore"`` lets it run once every parent finished, however. Parents must be known
        to the queue at enqueue (or be in the same enqueue_many batch): otherwise
        UnknownParentError, and DependencyCycleError for a cycle, before anything is
        written. Calling after() again adds parents. Returns the job."""
        if on_parent_failure not in ("cancel", "ignore"):
            raise ValueError(f"on_parent_failure must be 'cancel' or 'ignore', not "
                             f"{on_parent_failure!r}")
        if not parents:
            raise ValueError("after() needs at least one parent")
        ids = []
        for p in parents:
            pid = p.id if isinstance(p, Job) else p
            check_text(pid, "parent id", MAX_NAME_CHARS)
            if pid == self.id:
                raise ValueError(f"job {self.id} cannot wait for itself")
            ids.append(pid)
        old = self.depends_on
        self._deps = (tuple(dict.fromkeys(old + tuple(ids))), on_parent_failure)
        return self

    @property
    def depends_on(self) -> tuple[str, ...]:
        """The ids of the jobs this one waits for (empty: none)."""
        deps = getattr(self, "_deps", None)
        return () if deps is None else deps[0]

    @property
    def on_parent_failure(self) -> str:
        """What a dead-lettered or cancelled parent does to this job: "cancel" or "ignore"."""
        deps = getattr(self, "_deps", None)
        return "cancel" if deps is None else deps[1]

    def copy(self) -> Job:
        j = Job._raw()
        for name in _FIELDS:
            setattr(j, name, getattr(self, name))
        deps = getattr(self, "_deps", None)
        if deps is not None:
            j._deps = deps
        j.payload = json.loads(json.dumps(self.payload)) if self.payload else {}
        return j

    def __copy__(self) -> Job:
        # copy() leaves _auto_id out: a copy's id was not drawn for it, so a store checks
        # it (the original and its copy enqueued both: the second is a duplicate)
        return self.copy()

    def __deepcopy__(self, memo: dict[int, object]) -> Job:
        return self.copy()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Job):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in _FIELDS)

    __hash__ = None  # type: ignore[assignment]  # mutable: not hashable

    def __repr__(self) -> str:
        extra = f", queue={self.queue!r}" if self.queue != "default" else ""
        return (f"Job(id={self.id!r}, job_type={self.job_type!r}, status={self.status.name}, "
                f"priority={self.priority.name}, retry_count={self.retry_count}/"
                f"{self.max_retries}{extra})")


def retry_delay_ms(retry_count: int, *, base: float = DEFAULT_RETRY_BASE,
                   cap: float = DEFAULT_RETRY_CAP, jitter: float = 0.0,
                   rng: random.Random | None = None) -> int:
    """The backoff formula in integer milliseconds (see the module docstring)."""
    if not (isinstance(base, (int, float)) and base >= 0 and math.isfinite(base)):
        raise ValueError(f"retry base must be a finite number >= 0, got {base!r}")
    if not (isinstance(cap, (int, float)) and cap >= 0 and math.isfinite(cap)):
        raise ValueError(f"retry cap must be a finite number >= 0, got {cap!r}")
    if not (isinstance(jitter, (int, float)) and 0.0 <= jitter <= 1.0):
        raise ValueError(f"jitter must be between 0 and 1, got {jitter!r}")
    exp = min(max(retry_count, 0), 62)
    seconds = min(float(cap), float(base) * (1 << exp))
    if jitter:
        seconds *= 1.0 - jitter * (rng or random).random()
    return int(round(seconds * 1000))


def check_new_job(job: Any) -> None:
    """What every backend checks of a Job it is asked to enqueue (its attributes may have
    been set directly, past the builders): a Job, valid names and limits, new and PENDING.
    TypeError/ValueError; a caller writes nothing before this returns. Defaults are
    recognised by identity first, so the common job costs a few comparisons."""
    if type(job) is not Job and not isinstance(job, Job):
        raise TypeError(f"enqueue takes a Job, not {type(job).__name__}")
    check_text(job.id, "id", MAX_NAME_CHARS)
    check_name(job.job_type, "job_type")
    check_name(job.queue, "queue")
    if job.unique_key is not None:
        check_text(job.unique_key, "unique_key", MAX_UNIQUE_KEY_CHARS)
    prio = job.priority
    if type(prio) is not JobPriority and (isinstance(prio, bool) or not isinstance(prio, int)
                                          or not 1 <= prio <= 4):
        raise ValueError(f"priority must be a JobPriority, got {prio!r}")
    if job.max_retries is not DEFAULT_MAX_RETRIES:
        check_retries(job.max_retries, "max_retries")
    if job.timeout_seconds is not DEFAULT_TIMEOUT_SECONDS:
        check_seconds(job.timeout_seconds, "timeout_seconds", allow_none=True)
    if job.lease_duration is not DEFAULT_LEASE_SECONDS:
        check_seconds(job.lease_duration, "lease_duration")
    if job.status is not JobStatus.PENDING or job.retry_count != 0:
        raise ValueError(f"only a new PENDING job can be enqueued (job {job.id} is "
                         f"{job.status}, retry_count {job.retry_count})")


def scheduled_ms(job: Job) -> int | None:
    """The job's scheduled time in epoch ms (None if it has none), within MAX_DUE_MS."""
    if job.scheduled_at is None:
        return None
    sched = to_ms(job.scheduled_at, "scheduled_at")
    if not 0 <= sched <= MAX_DUE_MS:
        raise ValueError(f"scheduled_at {job.scheduled_at} is out of range")
    return sched


def payload_bytes(job: Job, limit: int) -> bytes:
    """The job's payload as stored (canonical JSON); ValueError past ``limit`` bytes."""
    payload = encode_payload(job.payload)
    if len(payload) > limit:
        raise ValueError(f"payload of job {job.id} is {len(payload)} bytes encoded; "
                         f"the limit is {limit} (max_payload_bytes)")
    return payload


def unfilled_job() -> Job:
    """An empty Job for the engine to fill from its state (no validation: the state holds
    only values that were validated before they were written)."""
    return Job._raw()
