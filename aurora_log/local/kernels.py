"""The pure-compute C helpers of the engine (no syscall, no file: loops over columns that
Python would run element by element). The C core's other door, log.py, is the one for I/O
(every syscall through the table faults.py replaces); nothing here reads or writes a file.

* ``IdIndex``: the id -> rank hash index over a snapshot's ids section (native/idindex.c);
* ``enqueue_run_len`` / ``enqueue_run_build``: replay's bulk ENQUEUE fold (native/enqrun.c);
* ``prefix_sums_u32``: the tail offsets of a snapshot's base jobs (native/columns.c).
"""

from __future__ import annotations

from array import array
from typing import Any

from ._binding import ffi, lib

__all__ = ["IdIndex", "enqueue_run_len", "enqueue_run_build", "prefix_sums_u32"]


class IdIndex:
    """Ranks of ``n`` ids stored at ``stride`` bytes from ``id_at`` in ``content`` (a
    buffer that must not change), ``width`` bytes each: u32 ranks and a tag byte per slot,
    2 to 4 slots per id. The ids are not copied."""
    __slots__ = ("_ids", "_table", "_ctable", "_mask", "_stride", "_width", "duplicate")

    def __init__(self, content: Any, id_at: int, n: int, stride: int, width: int) -> None:
        size = 2
        while size < 2 * n:
            size <<= 1
        self._table = bytearray(5 * size)     # u32 ranks, then a tag byte per slot
        # cffi views kept (they keep content and table alive): one per lookup costs more
        # than the lookup
        self._ids = ffi.from_buffer(content) + id_at
        self._ctable = ffi.from_buffer("uint32_t[]", self._table)
        self._mask = size - 1
        self._stride, self._width = stride, width
        # -1, or the rank of the first id that repeats an earlier one (the index is then
        # incomplete: the caller refuses the snapshot)
        self.duplicate: int = lib.au_idx_build(self._ids, n, stride, width, self._ctable,
                                               self._mask)

    def find(self, key: bytes) -> int:
        """The rank of the id ``key`` (``width`` bytes), or -1."""
        return lib.au_idx_find(self._ids, self._stride, self._width, self._ctable,
                               self._mask, key)

    def find_uuid(self, text: bytes) -> int:
        """The rank of the canonical UUID string ``text`` (16-byte ids), or -1."""
        return lib.au_idx_find_uuid(self._ids, self._ctable, self._mask, text, len(text))

    def find_any_uuid(self, lines: bytes) -> bool:
        """Whether any "\\n"-terminated UUID string in ``lines`` is held (16-byte ids)."""
        return lib.au_idx_find_any_uuid(self._ids, self._ctable, self._mask, lines,
                                        len(lines)) >= 0


def enqueue_run_len(buf: Any, recs: Any, n: int) -> int:
    """How many of the scanner's records ``recs[:n]`` (over ``buf``) form a run of plain
    ENQUEUE records of the first one's (job_type, queue) pair (0: the first is not one)."""
    return lib.au_enq_run_len(ffi.from_buffer(buf), recs, n)


def enqueue_run_build(buf: Any, recs: Any, m: int, pair: int, max_due: int
                      ) -> tuple[bytes, array, bytes, array, array, bytearray, int]:
    """A run of ``m`` records (enqueue_run_len): (the blobs back to back, where each ends,
    the ids each followed by "\\n", due times, record times, priorities, the records'
    bytes with their frame headers)."""
    total = recs[m - 1].off + recs[m - 1].len - recs[0].off   # bounds both outputs
    blobs, idbuf = bytearray(total), bytearray(total)
    ends, dues, ats = array("Q", bytes(8 * m)), array("q", bytes(8 * m)), array("q", bytes(8 * m))
    prios = bytearray(m)
    out = ffi.new("uint64_t[2]")            # ids' bytes, records' bytes
    lib.au_enq_run_build(ffi.from_buffer(buf), recs, m, pair, max_due,
                         ffi.from_buffer(blobs), ffi.from_buffer("uint64_t[]", ends),
                         ffi.from_buffer(idbuf), out, ffi.from_buffer("int64_t[]", dues),
                         ffi.from_buffer("int64_t[]", ats), ffi.from_buffer(prios), out + 1)
    return (bytes(blobs[:ends[m - 1]]), ends, bytes(idbuf[:out[0]]), dues, ats, prios,
            out[1])


def prefix_sums_u32(values: array, start: int) -> array:
    """``array('Q')`` of len(values) + 1 entries: start, then running sums of the u32s."""
    n = len(values)
    out = array("Q", [0]) * (n + 1)
    lib.au_prefix_sum_u32(ffi.from_buffer("uint32_t[]", values), n, start,
                          ffi.from_buffer("uint64_t[]", out))
    return out
