"""The job table: how a job is held in memory.

A job that has only been enqueued (the common case) is one ``bytes`` blob, not an object: a
fixed head (``JOB_HEAD``: the enqueue's LSN and times, limits, pair index, priority, flags,
unique key length) then the unique key and the JSON payload. Read a head with
``unpack_head(blob)`` and index it with the field names below (``h[PAIR]``, ``h[LEASE_MS]``):
one struct call for every field, and a name for each. A job that anything else happened to
becomes a ``Rec`` (a slotted object holding the blob plus its status, attempt and history).

After a version-2 snapshot load the state's ``jobs`` is a ``LazyJobs`` over a
``SnapshotBase`` (the snapshot's never-touched pending jobs, read straight from its bytes)
until something needs the whole dict.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import records as R
from .kernels import IdIndex
from ..errors import CorruptionError
from ..job import STATUS_CODES

if TYPE_CHECKING:
    from .state import State

__all__ = [
    "PENDING", "RUNNING", "COMPLETED", "FAILED", "DEAD_LETTER", "CANCELLED", "WAITING",
    "LIVE", "FINISHED", "JOB_HEAD", "HEAD_SIZE", "unpack_head", "unique_key_of", "Rec",
    "SnapshotBase", "LazyJobs", "uuid_bytes",
]

# status codes (JobStatus.code)
PENDING, RUNNING, COMPLETED, FAILED, DEAD_LETTER, CANCELLED = STATUS_CODES
WAITING = (PENDING, FAILED)            # claimable once due
LIVE = (PENDING, RUNNING, FAILED)      # holds its unique key
FINISHED = (COMPLETED, DEAD_LETTER, CANCELLED)

# The blob head (52 bytes; its byte planes are stored in version-2 snapshots, FORMAT.md).
JOB_HEAD = struct.Struct("<qqqqIIIIBBH")
HEAD_SIZE = JOB_HEAD.size
unpack_head = JOB_HEAD.unpack_from
pack_head = JOB_HEAD.pack
# field indexes of unpack_head(blob)
LSN = 0            # the enqueue record's LSN (the job's first claim-order seq)
AT = 1             # the enqueue record's time (ms)
CREATED = 2        # job.created_at (ms)
SCHEDULED = 3      # job.scheduled_at (ms), valid if FLAGS & F_SCHED
TIMEOUT_MS = 4     # 0 = none
LEASE_MS = 5
MAX_RETRIES = 6
PAIR = 7           # index of (queue, job_type) in State.pairs
PRIO = 8           # 1..4 (JobPriority)
FLAGS = 9
UKEY_LEN = 10      # bytes of the unique key after the head (0 = none)
F_SCHED = 1        # FLAGS bit: the job has a scheduled time


def blob_of(v: bytes | Rec) -> bytes:
    """A job table value's blob (the value itself for a never-touched job)."""
    return v.blob if isinstance(v, Rec) else v


def unique_key_of(blob: bytes) -> str | None:
    """The unique key stored in a job's blob (None if it has none)."""
    n = unpack_head(blob)[UKEY_LEN]
    return blob[HEAD_SIZE:HEAD_SIZE + n].decode() if n else None


class Rec:
    """A job that has been touched after its enqueue (its blob, status, attempt, history)."""
    __slots__ = ("blob", "status", "retry", "seq", "due", "token", "worker", "lease_dl",
                 "started", "hb", "completed", "error", "result", "progress", "pmsg",
                 "cancel_req", "hist")

    def __init__(self, blob: bytes, head: tuple | None = None):
        h = unpack_head(blob) if head is None else head    # head: unpack_head(blob) if known
        self.blob = blob
        self.status = PENDING
        self.retry = 0
        self.seq: int = h[LSN]
        self.due: int = h[SCHEDULED] if h[FLAGS] & F_SCHED else 0
        self.token: bytes | None = None
        self.worker: str | None = None
        self.lease_dl = 0
        self.started = 0
        self.hb = 0
        self.completed = 0
        self.error: str | None = None
        self.result: bytes | None = None
        self.progress: float | None = None
        self.pmsg: str | None = None
        self.cancel_req = False
        # (lsn, rtype, at_ms, status, worker, attempt, note)
        self.hist: list[tuple[Any, ...]] = [(h[LSN], R.ENQUEUE, h[AT], PENDING, None, 1, None)]


class SnapshotBase:
    """The never-touched pending jobs of a version-2 snapshot, read straight from the
    decompressed content (no object per job) until the job table is materialised.
    ``id(k)``/``blob(k)`` give the k-th job (k = rank, in the state's order), ``find(id)``
    its rank; the layout is native/FORMAT.md's (ids section, head planes, tails)."""
    __slots__ = ("n", "content", "id_at", "id_width", "id_offs", "planes", "tail_offs",
                 "ids", "built", "where", "_template", "_stored", "uuid", "_index",
                 "fill")

    def __init__(self, n, content, id_at, id_width, id_offs, planes, tail_offs, where,
                 uuid=False, fill=None):
        self.n = n
        # content read lazily (snapfile: a big frame's blocks decompressed on demand):
        # fill(a, b) makes content bytes a..b-1 real; the tails are filled when read
        self.fill = fill
        self.content = content
        self.uuid = uuid                      # ids are 16 raw bytes each (canonical UUIDs)
        self.id_at = id_at                    # offset of the ids section in content
        self.id_width = id_width              # > 0: each id is that many bytes + "\n"
        self.id_offs = id_offs                # id_width == 0: n + 1 offsets into content
        self.planes = planes                  # per head byte j: int offset of its plane of
        #                                       n bytes in content, or bytes (its constant)
        self.tail_offs = tail_offs            # n + 1 offsets into content
        self.ids = None                       # list of ids, once materialised
        self.built = None                     # (ids, blobs), built ahead (prebuild)
        self.where = where                    # the snapshot file, for error messages
        self._template = b"".join(b if type(b) is bytes else b"\x00" for b in planes)
        self._stored = [(j, b) for j, b in enumerate(planes) if type(b) is int]
        self._index: IdIndex | None = None   # the id index (find), built on first use

    def id(self, k: int) -> str:
        ids = self.ids
        if ids is not None:
            return ids[k]
        if self.uuid:
            a = self.id_at + 16 * k
            if self.fill is not None:
                self.fill(a, a + 16)          # the ids are decompressed when touched
            h = self.content[a:a + 16].hex()
            return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        w = self.id_width
        if w:
            a = self.id_at + k * (w + 1)
            return self.content[a:a + w].decode()
        o = self.id_offs
        return self.content[o[k]:o[k + 1]].decode()

    def blob(self, k: int) -> bytes:
        c, t, fill = self.content, self.tail_offs, self.fill
        if fill is not None:
            fill(t[k], t[k + 1])
        head = bytearray(self._template)
        for j, off in self._stored:
            head[j] = c[off + k]
        return bytes(head) + c[t[k]:t[k + 1]]

    @property
    def indexed(self) -> bool:
        """Whether ``find`` answers from a hash index (fixed-width ids; the caller builds
        its own index for variable-width ones)."""
        return self.uuid or self.id_width > 0

    def find(self, job_id: str) -> int | None:
        """The rank of ``job_id``, or None, from an id -> rank hash table built in C over
        the ids section the first time (10-20 bytes per job, the ids are not copied; a
        Python dict of the ids would hold ~150). Fixed-width ids only (``indexed``).
        CorruptionError if two base jobs share an id."""
        if self.content is None or type(job_id) is not str:
            return None
        index = self._index or self._build_index()
        if self.uuid:
            if len(job_id) != 36 or not job_id.isascii():
                return None
            k = index.find_uuid(job_id.encode())
        else:
            try:
                b = job_id.encode()
            except UnicodeEncodeError:
                return None
            if len(b) != self.id_width:
                return None
            k = index.find(b)
        return None if k < 0 else k

    def find_any_uuid(self, lines: bytes) -> bool:
        """Whether any of the "\n"-terminated ids in ``lines`` is a base id (UUID bases)."""
        if self.content is None:
            return False
        return (self._index or self._build_index()).find_any_uuid(lines)

    def _build_index(self) -> IdIndex:
        n = self.n
        stride, width = (16, 16) if self.uuid else (self.id_width + 1, self.id_width)
        self._fill_ids()
        index = IdIndex(self.content, self.id_at, n, stride, width)
        dup = index.duplicate
        if dup != -1:
            raise CorruptionError(f"snapshot holds {n} pending jobs but only "
                                  f"{n - 1 if dup >= 0 else '?'} distinct ids (rank {dup} "
                                  "repeats an earlier id)", file=self.where, offset=64)
        self._index = index
        return index

    def _fill_ids(self) -> None:
        """Make the whole ids section real (a lazily loaded snapshot decompresses UUID ids
        only when they are touched)."""
        if self.fill is not None and self.uuid:
            self.fill(self.id_at, self.id_at + 16 * self.n)

    def all_ids(self) -> list:
        self._fill_ids()
        c, n, id_at, width, o = self.content, self.n, self.id_at, self.id_width, self.id_offs
        if self.uuid:
            # 16 raw bytes -> "8-4-4-4-12" lowercase hex + "\n", by strided copies
            h = c[id_at:id_at + 16 * n].hex().encode()
            out = bytearray(37 * n)
            for j, d in enumerate(_UUID_HEX_AT):
                out[d::37] = h[j::32]
            dashes = b"-" * n
            for d in (8, 13, 18, 23):
                out[d::37] = dashes
            out[36::37] = b"\n" * n
            ids = out.decode().split("\n")
            ids.pop()
            return ids
        if width:
            ids = c[id_at:id_at + n * (width + 1)].decode().split("\n")
            ids.pop()                          # after the last "\n"
            return ids
        return [c[o[k]:o[k + 1]].decode() for k in range(n)]

    def build(self) -> tuple[list, list]:
        """Every id and blob, in order (C-speed bulk operations, no loop per job in Python
        bytecode for fixed-width ids). Pure: safe to run outside the state's lock."""
        built = self.built
        if built is not None:
            return built
        # locals only: a prebuild outside the lock may race with finish()
        c, n, planes, t, fill = self.content, self.n, self.planes, self.tail_offs, self.fill
        if c is None:
            raise RuntimeError("snapshot base already materialised")
        if fill is not None:
            fill(t[0], t[n])
        ids = self.all_ids()
        mv = memoryview(c)
        size = HEAD_SIZE
        heads_rows = bytearray(size * n)
        for j, pl in enumerate(planes):
            if type(pl) is bytes:
                if pl != b"\x00":
                    heads_rows[j::size] = pl * n
            else:
                heads_rows[j::size] = mv[pl:pl + n]
        heads: list = []
        step = 4096
        full = struct.Struct(f"{size}s" * step)
        end = (n // step) * step * size
        for tup in full.iter_unpack(memoryview(heads_rows)[:end]):
            heads.extend(tup)
        rest = n - len(heads)
        if rest:
            heads.extend(struct.unpack_from(f"{size}s" * rest, heads_rows, end))
        del heads_rows, mv
        tails = map(c.__getitem__, map(slice, itertools.islice(t, n), itertools.islice(t, 1, None)))
        blobs = list(map(bytes.__add__, heads, tails))
        built = (ids, blobs)
        if self.content is c:
            self.built = built
        return built

    def finish(self, ids: list) -> None:
        """Materialised: keep only the ids (the runs still walk ranks), drop the content."""
        self.ids = ids
        self.content = self.id_offs = self.tail_offs = self.built = self.fill = None
        self._index = None


_MISSING = object()
_UUID_HEX_AT = tuple(i for i in range(36) if i not in (8, 13, 18, 23))
_HEX = b"0123456789abcdef"


def uuid_bytes(job_id) -> bytes | None:
    """The 16 bytes of a canonical UUID string (lowercase 8-4-4-4-12 hex), else None."""
    if type(job_id) is not str or len(job_id) != 36:
        return None
    b = job_id.encode("ascii", "replace")
    if b[8:9] + b[13:14] + b[18:19] + b[23:24] != b"----":
        return None
    hx = b[:8] + b[9:13] + b[14:18] + b[19:23] + b[24:]
    if hx.translate(None, _HEX):
        return None
    return bytes.fromhex(hx.decode())


class LazyJobs:
    """``State.jobs`` after a version-2 snapshot load, until it is materialised: the
    snapshot's other jobs, every job touched since and every job added since in ``over``
    (a dict: its order is theirs), the never-touched pending ones in ``base``.
    A lookup is answered from ``over``, then from the ranks of base jobs already met
    (``known``: surfaced by a run or found before), then by finding the id in the base:
    the base's C hash index for fixed-width ids, else an id -> rank dict built once.
    Adding an id the base does not hold and replacing a value are done in place; deleting,
    iterating or copying first materialises the plain dict in the original order (base
    and snapshot jobs in snapshot order, then the added ones), swaps it into the state,
    and from then on every call is delegated to it (a reference held elsewhere keeps
    working)."""
    __slots__ = ("_st", "_base", "_over", "_known", "_index", "_rest_pos",
                 "_rest_ids", "_n", "_d", "_pre")

    def __init__(self, st: State, base: SnapshotBase, over: dict,
                 rest_pos: Sequence[int]) -> None:
        self._st: State | None = st
        self._base = base
        self._over = over
        self._known: dict[str, int] = {}      # id -> rank, base jobs met so far
        self._index: dict[str, int] | None = None
        self._rest_pos = list(rest_pos)       # per rest job: base jobs before it
        self._rest_ids = list(over)
        self._n = base.n + len(over)          # jobs held (base + over, minus base ids in over)
        self._d: dict | None = None
        self._pre: dict | None = None         # the bulk of the dict, built ahead (prebuild)

    def note(self, job_id: str, k: int) -> None:
        if self._d is None:
            self._known[job_id] = k

    def _rank(self, job_id) -> int | None:
        """The base rank of an id not in ``over`` (None: the base does not hold it)."""
        if type(job_id) is not str:
            return None                       # base ids are str
        k = self._known.get(job_id)
        if k is not None:
            return k
        base = self._base
        if base.indexed:
            return base.find(job_id)          # the C hash index (no id objects)
        ix = self._index
        if ix is None:
            ix = self._index = dict(zip(base.all_ids(), itertools.count()))
            if len(ix) != base.n:
                raise CorruptionError(f"snapshot holds {base.n} pending jobs but only "
                                      f"{len(ix)} distinct ids", file=base.where,
                                      offset=64)
        return ix.get(job_id)

    def get(self, job_id, default=None):
        d = self._d
        if d is not None:
            return d.get(job_id, default)
        v = self._over.get(job_id)
        if v is not None:
            return v
        k = self._rank(job_id)
        return default if k is None else self._base.blob(k)

    def __getitem__(self, job_id):
        v = self.get(job_id, _MISSING)
        if v is _MISSING:
            raise KeyError(job_id)
        return v

    def __contains__(self, job_id) -> bool:
        d = self._d
        if d is not None:
            return job_id in d
        return job_id in self._over or self._rank(job_id) is not None

    def __setitem__(self, job_id, value) -> None:
        d = self._d
        if d is not None:
            d[job_id] = value
            return
        over = self._over
        if job_id not in over:
            k = self._rank(job_id)
            if k is None:
                self._n += 1                  # a new id: it goes after every snapshot job
            else:
                self._known[job_id] = k       # a base job replaced: same count
        over[job_id] = value

    def insert_new(self, job_id: str, value: bytes) -> bool:
        """Add a job that must be new (an enqueue): False, and nothing changed, if the
        table holds ``job_id`` already. One lookup where ``in`` then ``[]=`` take two."""
        d = self._d
        if d is not None:
            if job_id in d:
                return False
            d[job_id] = value
            return True
        over = self._over
        if job_id in over or self._rank(job_id) is not None:
            return False
        over[job_id] = value
        self._n += 1                          # a new id: it goes after every snapshot job
        return True

    def insert_many_new(self, ids: list, values: list, lines: bytes | None = None,
                        distinct: set | None = None) -> bool:
        """``insert_new`` for many jobs at once (replay's bulk fold): False, and nothing
        changed, if any id is held already. ``lines``: the ids, each followed by "\n"
        (lets a UUID base check them all in one C call). The ids must be distinct;
        ``distinct``: the same ids as a set, if the caller has it (checked against the
        ids already met from the smaller side)."""
        d = self._d
        if d is not None:
            if not d.keys().isdisjoint(ids):
                return False
            d.update(zip(ids, values, strict=True))
            return True
        over = self._over
        known = self._known
        if not over.keys().isdisjoint(ids) or (
                known and not known.keys().isdisjoint(ids if distinct is None else distinct)):
            return False
        base = self._base
        if base.indexed and base.uuid and lines is not None:
            if base.find_any_uuid(lines):
                return False
        elif any(self._rank(j) is not None for j in ids):
            return False
        over.update(zip(ids, values, strict=True))
        self._n += len(ids)
        return True

    def __delitem__(self, job_id) -> None:
        del self.materialize()[job_id]

    def pop(self, *args):
        return self.materialize().pop(*args)

    def __len__(self) -> int:
        return len(self._d) if self._d is not None else self._n

    def __iter__(self):
        return iter(self.materialize())

    def keys(self):
        return self.materialize().keys()

    def values(self):
        return self.materialize().values()

    def items(self):
        return self.materialize().items()

    def copy(self) -> dict:
        return self.materialize().copy()

    def __eq__(self, other: object) -> bool:
        return self.materialize() == (other.materialize() if type(other) is LazyJobs else other)

    def __getattr__(self, name):
        # any other dict method (setdefault, update, clear, ...): on the materialised dict
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.materialize(), name)

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dict it stands for

    def __repr__(self) -> str:
        if self._d is not None:
            return repr(self._d)
        return f"<lazy job table: {self._n} jobs, {len(self._over)} loaded>"

    def prebuild(self) -> None:
        """Build the bulk of the plain dict now, outside the state's lock (the compactor
        does): everything but the changes made since, which materialize() applies. Pure
        reads of immutable snapshot bytes plus lookups of the snapshot's own rest jobs,
        whose values are never replaced (they are mutated in place), so no lock needed."""
        if self._d is None and self._pre is None:
            try:
                pre = self._bulk()
            except (RuntimeError, TypeError):  # materialised meanwhile
                return
            if self._d is None:
                self._pre = pre

    def _bulk(self) -> dict:
        """The snapshot's jobs as a dict, in the snapshot's order (base jobs by rank, each
        rest job before rank rest_pos); values as loaded, except rest jobs (the objects)."""
        base = self._base
        ids, blobs = base.build()
        over, rest_ids, rest_pos = self._over, self._rest_ids, self._rest_pos
        if rest_ids:
            all_ids: list = []
            vals: list = []
            prev = 0
            for rid, p in zip(rest_ids, rest_pos, strict=True):
                if p > prev:
                    all_ids += ids[prev:p]
                    vals += blobs[prev:p]
                    prev = p
                all_ids.append(rid)
                vals.append(over[rid])
            all_ids += ids[prev:]
            vals += blobs[prev:]
        else:
            all_ids, vals = ids, blobs
        d = dict(zip(all_ids, vals, strict=True))
        if len(d) != base.n + len(rest_ids):
            raise CorruptionError(f"snapshot holds {base.n + len(rest_ids)} jobs but only "
                                  f"{len(d)} distinct ids", file=base.where, offset=64)
        return d

    def materialize(self) -> dict:
        d = self._d
        if d is not None:
            return d
        d = self._pre if self._pre is not None else self._bulk()
        self._pre = None
        d.update(self._over)  # replaced values in place, then the added jobs in their order
        self._d = d
        self._base.finish(self._base.build()[0] if self._base.ids is None else self._base.ids)
        # drop what only the lazy table needed (every call goes to the dict from now on)
        self._over, self._known, self._index = {}, {}, None
        self._rest_ids, self._rest_pos = [], []
        if self._st is not None and self._st.jobs is self:
            self._st.jobs = d
        self._st = None
        return d
