"""The snapshot file format: a State to the bytes of native/FORMAT.md and back.

Two layers, both here so the format is read in one place:

* the state's export (``export_items`` / ``state_from_items``: version-1 items, one per job;
  ``export_split`` / ``state_from_split``: the version-2 split into never-touched pending
  jobs, stored column-wise with their claim order as runs, and every other job as an item);
* the file (``encode_snapshot`` for version 1, ``encode_state`` for version 2, and
  ``decode_snapshot`` for both): a 64-byte header and an lz4 frame of that content.

Building the State from decoded jobs is the fold's business (``State.load_jobs``,
``State.load_split``); the files' life (recovery, compaction, retirement) is snapshot.py's.
"""

from __future__ import annotations

import array
import collections
import itertools
import json
import mmap
import re
import struct
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol, cast

import lz4.frame

from ..errors import CorruptionError
from .control import Control
from .kernels import prefix_sums_u32
from .lazyframe import LazyContent, open_frame
from .log import crc32c, crc_mask
from .order import claim_key, enqueue_due, timer_key
from .state import State
from .table import AT, HEAD_SIZE, LSN, PAIR, PRIO, Rec, SnapshotBase, unpack_head

MAGIC = b"AURSNAP1"
VERSION = 3                      # written; versions 1, 2 and 3 are read
READ_VERSIONS = (1, 2, 3)        # 3 = 2 + the queue-control state in the meta
# magic, version, flags, lsn, items, body_len, content_len, max_at_ms, body crc | hdr crc
_HEAD = struct.Struct("<8sIIQQQQqI")
HEADER = _HEAD.size + 4          # 64
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
# version 2 content: u32 meta length, meta JSON, then these sections, each u64 length + bytes
SECTIONS = ("ids", "heads", "tail_lens", "tails", "rest_lens", "rest", "rest_pos", "runs")
SNAP_RE = re.compile(r"([0-9]{20})\.snap")  # fullmatch only: ASCII digits, no trailing newline
DEFAULT_MAX_CONTENT = 16 << 30    # refuse to decompress a snapshot claiming more than this
_CHUNK = 16 << 20                 # most output bytes one decompression call may produce
_IN_CHUNK = 1 << 20               # compressed bytes fed per call
_BIG_OUT = 4 << 30                # up to this much content: decompressed in one call
LAZY_MIN_CONTENT = 1 << 20    # from this content size on, versions 2+ load lazily
#                                   (lazyframe.py: the tails' blocks decompressed on demand)


EXPORT_VERSION = 1
_EXPORT_MAGIC = b"AQS\x01"
_ITEM_R = struct.Struct("<HI")       # an "R" item: id length, blob length


class Exportable(Protocol):
    """What the encoders read of a state (a State, or the compactor's captured view)."""

    @property
    def jobs(self) -> Mapping[str, bytes | Rec]: ...

    @property
    def pairs(self) -> list[tuple[str, str]]: ...

    @property
    def last_lsn(self) -> int: ...

    @property
    def applied(self) -> int: ...


@dataclass
class StateView:
    """A captured copy of a state's jobs to encode (the compactor's; see Exportable)."""
    jobs: dict[str, bytes | Rec]
    pairs: list[tuple[str, str]]
    last_lsn: int
    applied: int
    control: dict | None = None      # Control.export() at the capture
    procs: dict | None = None        # procs_export() at the capture (shared mode)


def _control_export(state: object) -> dict | None:
    """The queue-control state to store: a State's Control, or a view's captured export."""
    c = getattr(state, "control", None)
    if isinstance(c, Control):
        return c.export()
    return c if isinstance(c, dict) else None


def procs_export(state: object) -> dict | None:
    """Shared mode's process bookkeeping to store (None when there is none): which process
    (ATTACH LSN) claimed each running job, and the processes known gone. Without it a
    process that loads the snapshot could not hand back a dead claimer's jobs."""
    of, gone = getattr(state, "proc_of", None), getattr(state, "procs_gone", None)
    if isinstance(of, dict) and isinstance(gone, set):
        return {"of": dict(of), "gone": sorted(gone)} if (of or gone) else None
    procs = getattr(state, "procs", None)
    return procs if isinstance(procs, dict) else None


def _restore_procs(s: State, data: object) -> None:
    if data is None:
        return
    if not isinstance(data, dict) or not isinstance(data.get("of"), dict) \
            or not isinstance(data.get("gone"), list):
        raise ValueError("process bookkeeping is not {of: {...}, gone: [...]}")
    s.proc_of = {str(k): int(v) for k, v in data["of"].items()}
    s.procs_gone = {int(v) for v in data["gone"]}


def _restore_control(s: State, data: object) -> None:
    """Put a stored control state into ``s`` before its jobs are loaded (a job waiting
    for parents stays out of the claim order)."""
    if data is None:
        return
    if not isinstance(data, dict):
        raise ValueError("control state is not an object")
    s.control = Control.from_export(data)


# --------------------------------------------------------------------------- the state's export

def export_items(state: Exportable) -> Iterator[bytes]:
    """The live contents as a sequence of byte strings (a header, then one item per job).
    ``state_from_items(items)`` rebuilds an equal state (claim order included). The items
    are self-describing and versioned; the file layer frames and compresses them."""
    header = {"v": EXPORT_VERSION, "last_lsn": state.last_lsn, "applied": state.applied,
              "pairs": [list(p) for p in state.pairs], "jobs": len(state.jobs)}
    control = _control_export(state)
    if control is not None:
        header["control"] = control        # optional: exports before issue 17 lack it
    procs = procs_export(state)
    if procs is not None:
        header["procs"] = procs            # optional: only a shared store has any
    yield _EXPORT_MAGIC + json.dumps(header, separators=(",", ":")).encode()
    for job_id, v in state.jobs.items():
        if type(v) is bytes:
            i = job_id.encode()
            yield b"B" + struct.pack("<H", len(i)) + i + v
        else:
            assert type(v) is Rec
            yield export_rec(job_id, v)


def export_rec(job_id: str, v: Rec) -> bytes:
    """The export item of a touched job: "R", id, blob, then its fields as JSON."""
    i = job_id.encode()
    meta = json.dumps([
        v.status, v.retry, v.seq, v.due, v.token.hex() if v.token else None,
        v.worker, v.lease_dl, v.started, v.hb, v.completed, v.error,
        v.result.decode() if v.result is not None else None, v.progress, v.pmsg,
        v.cancel_req, v.hist], separators=(",", ":"), ensure_ascii=False).encode()
    return b"R" + _ITEM_R.pack(len(i), len(v.blob)) + i + v.blob + meta


def _rec_item(item: bytes) -> tuple[str, bytes, list]:
    li, lb = _ITEM_R.unpack_from(item, 1)
    job_id = item[7:7 + li].decode()
    return job_id, bytes(item[7 + li:7 + li + lb]), json.loads(item[7 + li + lb:])


def _items(it: Iterator[bytes]) -> Iterator[tuple[str, bytes, list | None]]:
    for item in it:
        kind = item[:1]
        if kind == b"B":
            li = item[1] | item[2] << 8
            yield item[3:3 + li].decode(), bytes(item[3 + li:]), None
        elif kind == b"R":
            yield _rec_item(item)
        else:
            raise ValueError(f"unknown state export item kind {kind!r}")


_MALFORMED = (KeyError, IndexError, TypeError, struct.error, UnicodeDecodeError,
              json.JSONDecodeError)


def state_from_items(items: Iterable[bytes]) -> State:
    """Rebuild a State from ``export_items``' items. ValueError if they are malformed."""
    it = iter(items)
    try:
        head = next(it)
    except StopIteration:
        raise ValueError("empty state export") from None
    if not head.startswith(_EXPORT_MAGIC):
        raise ValueError("not a state export (bad magic)")
    try:
        h = json.loads(head[len(_EXPORT_MAGIC):])
        if h["v"] != EXPORT_VERSION:
            raise ValueError(f"unknown state export version {h['v']}")
        s = State.restore(h["pairs"], h["last_lsn"], h["applied"])
        _restore_control(s, h.get("control"))
        _restore_procs(s, h.get("procs"))
        n = s.load_jobs(_items(it))
        if n != h["jobs"]:
            raise ValueError(f"state export has {n} jobs, its header says {h['jobs']}")
        return s
    except _MALFORMED as e:
        raise ValueError(f"malformed state export: {type(e).__name__}: {e}") from None


def export_split(state: Exportable, on_progress: Callable[[int], None] | None = None,
                 every: int = 50_000) -> dict:
    """The live contents split the way a version-2 snapshot stores them (see
    native/FORMAT.md): the never-touched pending jobs ("base": ids and blobs in state
    order, plus claim-order runs of their ranks), and every other job as an export
    item ("rest", with ``rest_pos`` = how many base jobs come before each). Runs are
    lists of ``(first_rank, count)`` segments: one per pair (ready jobs in claim order),
    then one for the timer jobs (due after their enqueue, in timer order).
    ``state_from_split`` rebuilds a state equal to ``state_from_items(export_items())``."""
    ids: list[str] = []
    blobs: list[bytes] = []
    rest: list[bytes] = []
    rest_pos: list[int] = []
    npairs = len(state.pairs)
    ready: list[list[int]] = [[] for _ in range(npairs)]
    timers: list[int] = []
    n = 0
    for job_id, v in state.jobs.items():
        n += 1
        if on_progress is not None and n % every == 0:
            on_progress(n)
        if type(v) is not bytes:
            assert type(v) is Rec
            rest.append(export_rec(job_id, v))
            rest_pos.append(len(ids))
            continue
        h = unpack_head(v)
        due, at = enqueue_due(h), h[AT]
        # key << 32 | rank: one int per job (ints are not tracked by the cyclic GC; a
        # million tuples would set off full collections in the middle of compaction)
        rank = len(ids)
        if due > at:
            timers.append(timer_key(due, h[LSN]) << 32 | rank)
        else:
            ready[h[PAIR]].append(claim_key(h[PRIO], due, h[LSN]) << 32 | rank)
        ids.append(job_id)
        blobs.append(v)
    runs = [_segments(r) for r in ready]
    runs.append(_segments(timers))
    meta = {"last_lsn": state.last_lsn, "applied": state.applied,
            "pairs": [list(p) for p in state.pairs], "control": _control_export(state),
            "procs": procs_export(state)}
    return {"meta": meta, "ids": ids, "blobs": blobs, "rest": rest, "rest_pos": rest_pos,
            "runs": runs}


def _segments(entries: list[int]) -> list[tuple[int, int]]:
    """Sort ``key << 32 | rank`` entries (keys are unique: they end in an LSN) and return
    the ranks as (first, count) segments of consecutive ranks (one segment when key order
    is rank order, the common case)."""
    entries.sort()
    segs: list[tuple[int, int]] = []
    first = nxt = -1
    for e in entries:
        rank = e & 0xFFFFFFFF
        if rank != nxt:
            if first >= 0:
                segs.append((first, nxt - first))
            first = rank
        nxt = rank + 1
    if first >= 0:
        segs.append((first, nxt - first))
    return segs


def state_from_split(meta: dict, base: SnapshotBase, rest: list[bytes], rest_pos: list[int],
                     runs: list[list[tuple[int, int]]], pair_counts: list[int],
                     ukeys: list[tuple[int, str]]) -> State:
    """The state of a version-2 snapshot, lazily (``State.load_split``): the base jobs
    stay in ``base``, the ``rest`` items are imported. ValueError if they are malformed."""
    try:
        s = State.restore(meta["pairs"], meta["last_lsn"], meta["applied"])
        _restore_control(s, meta.get("control"))
        _restore_procs(s, meta.get("procs"))
        recs = []
        for item in rest:
            if item[:1] != b"R":
                raise ValueError(f"unknown state export item kind {item[:1]!r}")
            recs.append(_rec_item(item))
        s.load_split(base, recs, rest_pos, runs, pair_counts, ukeys)
        return s
    except _MALFORMED as e:
        raise ValueError(f"malformed state export: {type(e).__name__}: {e}") from None


# --------------------------------------------------------------------------- the file

_mask = crc_mask   # the WAL's masked crc (FORMAT.md), defined once, in the C core




# --------------------------------------------------------------------------- encode/decode

@dataclass(frozen=True)
class SnapshotInfo:
    path: str
    lsn: int
    version: int
    items: int
    body_len: int
    content_len: int
    max_at_ms: int
    size: int


@dataclass(frozen=True)
class SnapshotProblem:
    """A snapshot that failed a check (or could not be used)."""
    file: str
    reason: str
    offset: int | None = None
    lsn: int | None = None
    moved_to: str | None = None

    def __str__(self) -> str:
        where = f" at offset {self.offset}" if self.offset is not None else ""
        return f"{self.file}{where}: {self.reason}"


def encode_snapshot(items: Iterable[bytes], lsn: int, max_at_ms: int = -1, *,
                    total: int | None = None,
                    on_progress: Callable[[int, int], None] | None = None,
                    every: int = 50_000) -> bytes:
    """A VERSION 1 snapshot file for the export ``items`` (header item first) at ``lsn``
    (compaction writes version 2, see ``encode_state``; this stays for tools and for the
    tests that check version 1 files are still read).
    Content = a table of one u32 length per item, then the items back to back (a loader
    finds every boundary with C-speed array operations instead of a loop over prefixes)."""
    data = bytearray()
    lens = array.array("I")
    n = 0
    for item in items:
        lens.append(len(item))
        data += item
        n += 1
        if on_progress is not None and n % every == 0:
            on_progress(n, total if total is not None else n)
    if sys.byteorder != "little":
        lens.byteswap()
    table = lens.tobytes()
    # independent blocks: measured a little smaller and faster to decode than linked ones
    # on snapshot content (job blobs repeat field-wise, not across long distances)
    comp = lz4.frame.LZ4FrameCompressor(block_linked=False, content_checksum=True)
    clen = len(table) + len(data)
    body = b"".join((comp.begin(source_size=clen), comp.compress(table), comp.compress(data),
                     comp.flush()))
    del data, table
    return _frame(1, lsn, n, body, clen, max_at_ms)


def _frame(version: int, lsn: int, items: int, body: bytes, clen: int, max_at_ms: int) -> bytes:
    head = _HEAD.pack(MAGIC, version, 0, lsn, items, len(body), clen, max_at_ms,
                      _mask(crc32c(body)))
    return head + _U32.pack(_mask(crc32c(head))) + body


def _u32s(values) -> bytes:
    a = array.array("I", values)
    if sys.byteorder != "little":
        a.byteswap()
    return a.tobytes()


_STEP = 1 << 15    # jobs per piece: keeps every bulk C call (join, slice, encode) to ~1 ms,
#                    so a compaction running beside the queue holds the GIL in short turns


def _planes(chunks: list[bytes], width: int, n: int) -> list[bytes]:
    """Fixed-width rows (given as chunks of whole rows) as byte planes (byte j of every
    row together), a plane whose bytes are all equal stored as that one byte: kinds
    (W bytes, 0 = stored, 1 = constant), constants (W bytes, 0 for stored planes), then
    the stored planes, n bytes each. Returned as pieces (their concatenation)."""
    kinds = bytearray(width)
    consts = bytearray(width)
    stored: list[bytes] = []
    for j in range(width):
        pieces = [c[j::width] for c in chunks]
        v = pieces[0][0] if n else 0
        if all(pc.count(v) == len(pc) for pc in pieces):
            kinds[j] = 1
            consts[j] = v
        else:
            stored += pieces
    return [bytes(kinds), bytes(consts)] + stored


def _id_pieces(ids: list[str]) -> tuple[int, bool, list[bytes]]:
    """The ids section as pieces, in the first form every id fits (FORMAT.md): canonical
    UUIDs as 16 raw bytes; fixed-width ASCII + "\\n"; else u32 lengths + UTF-8."""
    nb = len(ids)
    if not nb:
        return 0, False, []
    width = len(ids[0])
    joined: list[bytes] = []
    fixed = True                       # every id ASCII, of one width, without "\n"
    for k in range(0, nb, _STEP):
        part = ids[k:k + _STEP]
        j = "\n".join(part)
        jb = j.encode()
        if not (width and set(map(len, part)) == {width} and len(jb) == len(j)
                and jb.count(b"\n") == len(part) - 1):
            fixed = False
            break
        joined.append(jb)
    if not fixed:
        enc = [i.encode() for i in ids]
        return 0, False, [_u32s(map(len, enc))] + [b"".join(enc[k:k + _STEP])
                                                  for k in range(0, nb, _STEP)]
    if width == 36:
        raw = []
        for jb in joined:
            m = jb.count(b"\n") + 1
            if not all(jb[p::37] == b"-" * m for p in (8, 13, 18, 23)):
                break
            hx = jb.translate(None, b"-\n")
            if len(hx) != 32 * m or hx.translate(None, b"0123456789abcdef"):
                break
            raw.append(bytes.fromhex(hx.decode()))
        else:
            return 36, True, raw
    return width, False, [jb + b"\n" for jb in joined]


def encode_state(state: Exportable, lsn: int, max_at_ms: int = -1, *,
                 on_progress: Callable[[int, int], None] | None = None,
                 every: int = 50_000, version: int = VERSION) -> bytes:
    """The whole VERSION 3 snapshot file of ``state`` at ``lsn`` (layout: native/FORMAT.md;
    ``version=2`` writes the layout without the control state, for the tests that check
    version 2 files are still read: ValueError if the state has control to lose).
    The never-touched pending jobs are stored column-wise (ids, byte planes of their
    fixed heads, tails) with their claim order as runs of ranks, so a load needs no
    per-job work before the first claim; every other job is a version-1 export item.
    Built in pieces of _STEP jobs and compressed piece by piece (lz4 releases the GIL):
    no single call holds the GIL for long while the queue runs beside it."""
    total = len(state.jobs)
    sp = export_split(state,
        None if on_progress is None else (lambda n: on_progress(n, total + 1)), every)
    ids, blobs = sp["ids"], sp["blobs"]
    nb = len(ids)
    width, uuid, ids_sec = _id_pieces(ids)
    del ids
    hs = HEAD_SIZE
    steps = range(0, nb, _STEP)
    heads = _planes([b"".join([b[:hs] for b in blobs[k:k + _STEP]]) for k in steps], hs, nb)
    tail_lens = _planes([_u32s([len(b) - hs for b in blobs[k:k + _STEP]]) for k in steps],
                        4, nb)
    tails = [b"".join([b[hs:] for b in blobs[k:k + _STEP]]) for k in steps]
    del blobs
    rest = sp["rest"]
    runs = bytearray()
    for segs in sp["runs"]:
        runs += _U32.pack(len(segs))
        runs += _u32s(itertools.chain.from_iterable(segs))
    control = sp["meta"]["control"] or {}
    fields = {"v": version, "last_lsn": sp["meta"]["last_lsn"],
              "applied": sp["meta"]["applied"], "pairs": sp["meta"]["pairs"],
              "jobs": nb + len(rest), "base": nb, "rest": len(rest),
              "id_width": width, "uuid": uuid}
    if version == 3:
        fields["control"] = control
        if sp["meta"]["procs"] is not None:
            fields["procs"] = sp["meta"]["procs"]
    elif version != 2 or control != Control().export():
        raise ValueError(f"cannot write this state as a version {version} snapshot")
    meta = json.dumps(fields, separators=(",", ":")).encode()
    parts = [_U32.pack(len(meta)), meta]
    for sec in (ids_sec, heads, tail_lens, tails, [_u32s(map(len, rest))], rest,
                [_u32s(sp["rest_pos"])], [bytes(runs)]):
        parts.append(_U64.pack(sum(map(len, sec))))
        parts += sec
    del ids_sec, heads, tails, sp
    clen = sum(map(len, parts))
    comp = lz4.frame.LZ4FrameCompressor(block_linked=False, content_checksum=True)
    out = [comp.begin(source_size=clen)]
    for part in parts:
        if part:
            out.append(comp.compress(part))
    out.append(comp.flush())
    del parts
    body = b"".join(out)
    return _frame(version, lsn, total + 1, body, clen, max_at_ms)


def read_header(data: bytes | bytearray, path: str = "?") -> SnapshotInfo:
    """Check and parse the 64-byte header (not the body). CorruptionError."""
    if len(data) < HEADER:
        raise CorruptionError(f"snapshot shorter than its {HEADER}-byte header "
                              f"({len(data)} bytes)", file=path, offset=0)
    magic, ver, flags, lsn, items, blen, clen, max_at, bcrc = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise CorruptionError("bad snapshot magic", file=path, offset=0)
    (hcrc,) = _U32.unpack_from(data, _HEAD.size)
    if hcrc != _mask(crc32c(data[:_HEAD.size])):
        raise CorruptionError("snapshot header crc mismatch", file=path, offset=_HEAD.size)
    if ver not in READ_VERSIONS or flags != 0:
        raise CorruptionError(f"unsupported snapshot version {ver} / flags {flags:#x}",
                              file=path, offset=8)
    return SnapshotInfo(path, lsn, ver, items, blen, clen, max_at, len(data))


def decode_snapshot(data: bytes | bytearray, path: str = "?", *,
                    max_content: int = DEFAULT_MAX_CONTENT) -> tuple[SnapshotInfo, State]:
    """Every check, then the State. CorruptionError (file, offset, reason) on any failure:
    header, body length, body crc, lz4 frame (declared content size checked against the
    header and ``max_content`` BEFORE decompressing; decompressed incrementally with a hard
    bound; content checksum), item framing and count, state_from_items."""
    info = read_header(data, path)
    body = memoryview(data)[HEADER:]
    if len(body) != info.body_len:
        raise CorruptionError(f"snapshot body is {len(body)} bytes, header says "
                              f"{info.body_len}", file=path, offset=HEADER, lsn=info.lsn)
    if _mask(crc32c(body)) != _HEAD.unpack_from(data)[8]:
        raise CorruptionError("snapshot body crc mismatch", file=path, offset=HEADER,
                              lsn=info.lsn)
    if info.content_len > max_content:
        raise CorruptionError(f"snapshot content of {info.content_len} bytes is over the "
                              f"limit ({max_content})", file=path, offset=40, lsn=info.lsn)
    lazy = None
    if info.version >= 2 and info.content_len >= LAZY_MIN_CONTENT:
        lazy = open_frame(body, info.content_len, path, HEADER)
    content: bytes | mmap.mmap
    if lazy is not None:
        content = lazy.content
        _fill_all_but_tails(lazy, info.content_len)
    else:
        content = _decompress(body, info, path)
    try:
        if info.version == 1:          # never lazy (versions 2+ only)
            state = state_from_items(_split(cast(bytes, content), info, path))
        else:
            state = _decode_v2(content, info, path,
                               lazy.ensure if lazy is not None else None)
    except ValueError as e:
        raise CorruptionError(f"snapshot state does not rebuild: {e}", file=path,
                              offset=HEADER, lsn=info.lsn) from None
    if state.last_lsn != info.lsn:
        raise CorruptionError(f"snapshot state is at LSN {state.last_lsn}, header says "
                              f"{info.lsn}", file=path, offset=16, lsn=info.lsn)
    return info, state


def _fill_all_but_tails(lazy: LazyContent, clen: int) -> None:
    """Decompress every section but the ids and the tails (the payloads: most of the
    bytes, read when a job is touched; the ids when one is read or the id index is built,
    and by _decode_v2 when it checks ids that are not UUIDs). A layout that does not add
    up is filled whole, for _decode_v2 to report with its usual reasons."""
    c = lazy.content
    lazy.ensure(0, 4)
    pos = 4 + (_U32.unpack_from(c)[0] if clen >= 4 else 0)
    if pos > clen:
        return lazy.ensure_all()
    lazy.ensure(4, pos)
    for name in SECTIONS:
        if pos + 8 > clen:
            return lazy.ensure_all()
        lazy.ensure(pos, pos + 8)
        (ln,) = _U64.unpack_from(c, pos)
        if pos + 8 + ln > clen:
            return lazy.ensure_all()
        if name not in ("ids", "tails"):
            lazy.ensure(pos + 8, pos + 8 + ln)
        pos += 8 + ln
    if pos != clen:
        lazy.ensure_all()


def _decompress(body, info: SnapshotInfo, path: str) -> bytes:
    try:
        fi = lz4.frame.get_frame_info(body)
    except (RuntimeError, ValueError) as e:
        raise CorruptionError(f"bad lz4 frame header: {e}", file=path, offset=HEADER,
                              lsn=info.lsn) from None
    if not fi.get("content_checksum") or fi.get("content_size") != info.content_len:
        raise CorruptionError(f"lz4 frame declares {fi.get('content_size')} content bytes "
                              f"(checksum {'on' if fi.get('content_checksum') else 'off'}); "
                              f"the header says {info.content_len}", file=path, offset=HEADER,
                              lsn=info.lsn)
    want = info.content_len
    n = len(body)
    if want > 256 * n + (64 << 10):
        # an LZ4 sequence turns one input byte into at most ~255 output bytes
        raise CorruptionError(f"lz4 frame of {n} bytes cannot hold the declared {want} "
                              "content bytes", file=path, offset=HEADER, lsn=info.lsn)
    d = lz4.frame.LZ4FrameDecompressor()
    parts = []
    got = 0
    trailing = 0
    # One call for the whole body when the output fits in _BIG_OUT (the output buffer is
    # then allocated once, bounded by the check above, and nothing is joined): a load of a
    # big snapshot is dominated by this. Beyond that, pieces: the decompressor copies the
    # input it has not consumed on every call, so the input goes in 1 MiB pieces.
    in_chunk = n if want < _BIG_OUT else _IN_CHUNK
    out_chunk = want + 1 if want < _BIG_OUT else _CHUNK
    try:
        for pos in range(0, n, in_chunk):
            data = body[pos:pos + in_chunk]
            while True:
                out = d.decompress(data, max_length=min(out_chunk, want + 1 - got))
                data = b""
                if out:
                    parts.append(out)
                    got += len(out)
                    if got > want:
                        raise CorruptionError(f"lz4 frame holds more than the declared {want}"
                                              " bytes", file=path, offset=HEADER + pos,
                                              lsn=info.lsn)
                if d.eof or d.needs_input:
                    break
            if d.eof:
                trailing = len(d.unused_data or b"") + max(0, n - (pos + in_chunk))
                break
    except RuntimeError as e:   # lz4 reports checksum/format errors as RuntimeError
        raise CorruptionError(f"lz4 frame does not decode: {e}", file=path, offset=HEADER,
                              lsn=info.lsn) from None
    if not d.eof:
        raise CorruptionError("lz4 frame is truncated (no end mark)", file=path,
                              offset=HEADER + info.body_len, lsn=info.lsn)
    if trailing:
        raise CorruptionError(f"{trailing} bytes after the lz4 frame", file=path,
                              offset=HEADER + info.body_len - trailing, lsn=info.lsn)
    if got != want:
        raise CorruptionError(f"lz4 frame holds {got} bytes, declared {want}", file=path,
                              offset=HEADER, lsn=info.lsn)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _split(content: bytes, info: SnapshotInfo, path: str) -> Iterator[bytes]:
    """The items: the length table must hold ``items`` lengths that add up exactly to the
    rest of the content."""
    count = info.items
    tbl = 4 * count
    if tbl > len(content):
        raise CorruptionError(f"snapshot content of {len(content)} bytes cannot hold a "
                              f"length table for {count} items", file=path, offset=HEADER,
                              lsn=info.lsn)
    lens = array.array("I")
    lens.frombytes(content[:tbl])
    if sys.byteorder != "little":
        lens.byteswap()
    if tbl + sum(lens) != len(content):
        raise CorruptionError(f"snapshot item lengths add up to {sum(lens)} bytes, the "
                              f"content holds {len(content) - tbl}", file=path, offset=HEADER,
                              lsn=info.lsn)
    ends = list(itertools.accumulate(lens, initial=tbl))
    return (content[a:b] for a, b in zip(ends, itertools.islice(ends, 1, None), strict=False))


def _decode_v2(content, info: SnapshotInfo, path: str,
               fill: Callable[[int, int], None] | None = None) -> State:
    """Version 2 content -> a lazily loaded State (state_from_split). Checks everything
    that C-speed operations can check without a loop per job: the meta, that the sections
    tile the content exactly, their sizes against the counts, the ids' separators and
    encoding, every head's priority, flags and pair (byte planes), unique keys, the rest
    items, and that the runs hold every base job exactly once. What only a job's own
    blob can tell (its run, its key order) is checked as the run is walked (_run_head)."""
    lsn = info.lsn
    clen = len(content)

    def bad(reason, at=None):
        where = f" (content offset {at})" if at is not None else ""
        return CorruptionError(f"snapshot content: {reason}{where}", file=path,
                               offset=HEADER, lsn=lsn)

    if clen < 4:
        raise bad("shorter than its meta length")
    (mlen,) = _U32.unpack_from(content)
    if 4 + mlen > clen:
        raise bad(f"meta of {mlen} bytes overruns the content", 0)
    try:
        meta = json.loads(content[4:4 + mlen])
        if type(meta) is not dict or meta.get("v") != info.version:
            raise ValueError(f"not a version {info.version} meta")
        if info.version >= 3 and type(meta.get("control")) is not dict:
            raise ValueError("a version 3 meta without its control state")
        nb, nr, total = meta["base"], meta["rest"], meta["jobs"]
        width, pairs, uuid = meta["id_width"], meta["pairs"], meta["uuid"]
        if type(uuid) is not bool or (uuid and width != 36):
            raise ValueError("bad id form")
        for x in (nb, nr, total, width, meta["last_lsn"], meta["applied"]):
            if type(x) is not int or x < 0:
                raise ValueError(f"bad count {x!r}")
        if total != nb + nr or type(pairs) is not list:
            raise ValueError("job counts disagree")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise bad(f"bad meta: {e}", 4) from None
    if total + 1 != info.items:
        raise bad(f"meta says {total} jobs, the header's item count {info.items} says "
                  f"{info.items - 1}")
    pos = 4 + mlen
    secs = {}
    for name in SECTIONS:
        if pos + 8 > clen:
            raise bad(f"section {name!r} missing", pos)
        (ln,) = _U64.unpack_from(content, pos)
        if pos + 8 + ln > clen:
            raise bad(f"section {name!r} of {ln} bytes overruns the content", pos)
        secs[name] = (pos + 8, ln)
        pos += 8 + ln
    if pos != clen:
        raise bad(f"{clen - pos} bytes after the last section", pos)

    def sec(name):
        a, ln = secs[name]
        return content[a:a + ln]

    def u32s(name, count):
        a, ln = secs[name]
        if ln != 4 * count:
            raise bad(f"section {name!r} is {ln} bytes, expected {4 * count}", a)
        arr = array.array("I")
        arr.frombytes(content[a:a + ln])
        if sys.byteorder != "little":
            arr.byteswap()
        return arr

    # ids (UUIDs: 16 raw bytes each, nothing to check in them here: left compressed until
    # one is read or the id index is built, which finds duplicates)
    ids_at, ids_len = secs["ids"]
    id_offs = None
    if fill is not None and not uuid:
        fill(ids_at, ids_at + ids_len)
    if uuid:
        if ids_len != 16 * nb:
            raise bad(f"ids section is {ids_len} bytes, expected {nb} x 16", ids_at)
    elif width:
        if ids_len != nb * (width + 1):
            raise bad(f"ids section is {ids_len} bytes, expected {nb} x {width + 1}", ids_at)
        raw = sec("ids")
        if raw[width::width + 1] != b"\n" * nb or raw.count(b"\n") != nb:
            raise bad("ids are not each followed by one newline", ids_at)
        if not raw.isascii():
            raise bad("fixed-width ids are not ASCII", ids_at)
        del raw
    else:
        if ids_len < 4 * nb:
            raise bad("ids section shorter than its length table", ids_at)
        lens = array.array("I")
        lens.frombytes(content[ids_at:ids_at + 4 * nb])
        if sys.byteorder != "little":
            lens.byteswap()
        if sum(lens) != ids_len - 4 * nb or (nb and min(lens) == 0):
            raise bad("id lengths do not add up to the ids section", ids_at)
        id_offs = array.array("Q", itertools.accumulate(lens, initial=ids_at + 4 * nb))
        for k in range(nb):
            try:
                content[id_offs[k]:id_offs[k + 1]].decode()
            except UnicodeDecodeError:
                raise bad(f"id {k} is not UTF-8", id_offs[k]) from None
    # heads and tail lengths: byte planes (see _planes)
    hs = HEAD_SIZE

    def read_planes(name, width):
        a, ln = secs[name]
        if ln < 2 * width:
            raise bad(f"section {name!r} shorter than its plane table", a)
        kinds, consts = content[a:a + width], content[a + width:a + 2 * width]
        if kinds.translate(None, b"\x00\x01"):
            raise bad(f"section {name!r}: bad plane kind", a)
        out = []
        p = a + 2 * width
        for j in range(width):
            if kinds[j]:
                out.append(consts[j:j + 1])
            elif consts[j]:
                raise bad(f"section {name!r}: stored plane {j} with a constant", a + width + j)
            else:
                out.append(p)
                p += nb
        if p != a + ln:
            raise bad(f"section {name!r} is {ln} bytes, its planes need {p - a}", a)
        return out

    def plane_bytes(pl):
        return pl * nb if type(pl) is bytes else content[pl:pl + nb]

    planes = read_planes("heads", hs)
    heads_at = secs["heads"][0]

    def plane(j):
        return plane_bytes(planes[j])

    npairs = len(pairs)
    if nb:
        if plane(48).translate(None, b"\x01\x02\x03\x04"):
            raise bad("a pending job's priority is not 1..4", heads_at)
        if plane(49).translate(None, b"\x00\x01"):
            raise bad("a pending job's flags are not 0 or 1", heads_at)
        if npairs == 0:
            raise bad("pending jobs but no (queue, job_type) pairs", heads_at)
        if npairs <= 256:
            p0 = plane(44)
            if p0.translate(None, bytes(range(npairs))) or any(
                    plane(j).translate(None, b"\x00") for j in (45, 46, 47)):
                raise bad("a pending job's pair index is out of range", heads_at)
            pair_counts = [p0.count(ix) for ix in range(npairs)]
        else:
            col = bytearray(4 * nb)
            for j in range(4):
                col[j::4] = plane(44 + j)
            pc = array.array("I", bytes(col))
            if sys.byteorder != "little":
                pc.byteswap()
            if max(pc) >= npairs:
                raise bad("a pending job's pair index is out of range", heads_at)
            cnt = collections.Counter(pc)
            pair_counts = [cnt.get(ix, 0) for ix in range(npairs)]
    else:
        pair_counts = [0] * npairs
    # tails
    col = bytearray(4 * nb)
    for j, pl in enumerate(read_planes("tail_lens", 4)):
        col[j::4] = plane_bytes(pl)
    tl = array.array("I", bytes(col))
    if sys.byteorder != "little":
        tl.byteswap()
    del col
    tails_at, tails_len = secs["tails"]
    tail_offs = prefix_sums_u32(tl, tails_at)       # in C: a million entries
    if tail_offs[nb] - tails_at != tails_len:
        raise bad("tail lengths do not add up to the tails section", tails_at)
    # unique keys (u16 at head bytes 50..51): rare, so found by a scan for non-zero bytes
    ukeys = []
    if nb:
        lo, hi = plane(50), plane(51)
        if lo.translate(None, b"\x00") or hi.translate(None, b"\x00"):
            ranks = sorted({m.start() for p in (lo, hi) for m in re.finditer(rb"[^\x00]", p)})
            for k in ranks:
                lu = lo[k] | hi[k] << 8
                if lu > tl[k]:
                    raise bad(f"pending job {k}: unique key longer than its tail",
                              tail_offs[k])
                if fill is not None:
                    fill(tail_offs[k], tail_offs[k] + lu)
                try:
                    ukeys.append((k, content[tail_offs[k]:tail_offs[k] + lu].decode()))
                except UnicodeDecodeError:
                    raise bad(f"pending job {k}: unique key is not UTF-8",
                              tail_offs[k]) from None
    # the rest: version 1 export items, with their places among the base jobs
    rl = u32s("rest_lens", nr)
    rest_at, rest_len = secs["rest"]
    if sum(rl) != rest_len:
        raise bad("rest item lengths do not add up to the rest section", rest_at)
    ends = list(itertools.accumulate(rl, initial=rest_at))
    rest = [content[a:b] for a, b in zip(ends, ends[1:], strict=False)]
    rest_pos = u32s("rest_pos", nr).tolist()
    if rest_pos != sorted(rest_pos) or (rest_pos and rest_pos[-1] > nb):
        raise bad("rest positions are not ordered within the base jobs", secs["rest_pos"][0])
    # runs: one per pair, then the timers; together every base rank exactly once
    runs_at, runs_len = secs["runs"]
    p = runs_at
    end = runs_at + runs_len
    runs = []
    allsegs = []
    for r in range(npairs + 1):
        if p + 4 > end:
            raise bad(f"run {r} missing", p)
        (m,) = _U32.unpack_from(content, p)
        p += 4
        if p + 8 * m > end:
            raise bad(f"run {r} of {m} segments overruns the runs section", p)
        a = array.array("I")
        a.frombytes(content[p:p + 8 * m])
        if sys.byteorder != "little":
            a.byteswap()
        p += 8 * m
        segs = list(zip(a[0::2], a[1::2], strict=True))
        runs.append(segs)
        allsegs += segs
    if p != end:
        raise bad(f"{end - p} bytes after the last run", p)
    allsegs.sort()
    expect = 0
    for a0, c0 in allsegs:
        if a0 != expect or c0 == 0:
            raise bad(f"the runs do not hold every pending job exactly once (rank {expect})",
                      runs_at)
        expect = a0 + c0
    if expect != nb:
        raise bad(f"the runs hold {expect} pending jobs, the meta {nb}", runs_at)
    base = SnapshotBase(nb, content, ids_at, width, id_offs, planes, tail_offs, path, uuid,
                        fill)
    return state_from_split(meta, base, rest, rest_pos, runs, pair_counts, ukeys)
