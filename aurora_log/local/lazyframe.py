"""A snapshot's LZ4 frame read block by block: the content as an anonymous mapping whose
blocks are decompressed on demand (issue 21: reopen after compaction without decompressing
a million payloads, and without holding them in memory until a job is touched).

Compaction writes the frame with independent blocks (``block_linked=False``), so any block
decompresses alone. ``open_frame`` checks the frame's structure (descriptor, declared
content size, every block header up to the end mark and the content checksum, each block
within the maximum size, exactly as many blocks as the content size implies) and returns a
``LazyContent``: ``content`` is a mapping of the full content size, zero and not resident
until ``ensure(a, b)`` fills the blocks covering bytes a..b-1 (each must decompress to its
exact size: every block but the last is the block maximum). The frame's content checksum
(xxh32 over the whole content) is not verified on this path; the snapshot's body crc32c,
checked over every byte before this runs, is what guards the bytes.
"""

from __future__ import annotations

import mmap
import struct
import threading

import lz4.block

from ..errors import CorruptionError

__all__ = ["LazyContent", "open_frame"]

_MAGIC = 0x184D2204
_BLOCK_MAX = {4: 64 << 10, 5: 256 << 10, 6: 1 << 20, 7: 4 << 20}
_U32 = struct.Struct("<I")


class LazyContent:
    """The content of one frame, filled block by block (see the module doc)."""
    __slots__ = ("content", "_body", "_blocks", "_filled", "_bmax", "_clen", "_where",
                 "_base", "_left", "_lock")

    def __init__(self, body, blocks: list[tuple[int, int, bool]], bmax: int, clen: int,
                 where: str, base_offset: int) -> None:
        self._body = body                     # the frame (a memoryview of the file's body)
        self._blocks = blocks                 # (offset in body, stored size, uncompressed)
        self._bmax = bmax
        self._clen = clen
        self._where = where
        self._base = base_offset              # the body's offset in the file (errors)
        self._filled = bytearray(len(blocks))
        self._left = len(blocks)              # blocks not filled yet
        # a compaction's prebuild fills blocks outside the queue lock while claims read
        self._lock = threading.Lock()
        self.content = mmap.mmap(-1, clen)

    def ensure(self, a: int, b: int) -> None:
        """Make content bytes a..b-1 real (decompress the blocks that hold them)."""
        if b <= a or not self._left:
            return
        bmax, filled = self._bmax, self._filled
        for j in range(a // bmax, (b - 1) // bmax + 1):
            if not filled[j]:
                self._fill(j)

    def ensure_all(self) -> None:
        self.ensure(0, self._clen)

    def _fill(self, j: int) -> None:
        off, size, raw = self._blocks[j]
        want = min(self._bmax, self._clen - j * self._bmax)
        src = self._body[off:off + size]
        try:
            out = bytes(src) if raw else lz4.block.decompress(src, uncompressed_size=want)
        except lz4.block.LZ4BlockError as e:
            raise CorruptionError(f"lz4 frame does not decode: block {j}: {e}",
                                  file=self._where, offset=self._base + off) from None
        if len(out) != want:
            raise CorruptionError(f"lz4 frame does not decode: block {j} holds {len(out)} "
                                  f"bytes, expected {want}", file=self._where,
                                  offset=self._base + off)
        with self._lock:
            if not self._filled[j]:
                self.content[j * self._bmax:j * self._bmax + want] = out
                self._filled[j] = 1
                self._left -= 1


def open_frame(body, clen: int, where: str, base_offset: int) -> LazyContent | None:
    """The frame in ``body`` (declared content size ``clen``) as a LazyContent, or None if
    it is not a frame this reader takes (linked blocks, a dictionary id): the caller then
    decompresses it whole. CorruptionError (file, offset, reason) for a frame whose
    structure is broken."""
    n = len(body)

    # the reasons are _decompress's where they say the same
    def bad(reason: str, at: int) -> CorruptionError:
        return CorruptionError(reason, file=where, offset=base_offset + at)

    if n < 15 or _U32.unpack_from(body, 0)[0] != _MAGIC:
        raise bad("bad lz4 frame header: bad magic or too short", 0)
    flg, bd = body[4], body[5]
    if flg >> 6 != 1 or flg & 0x02:
        raise bad(f"bad lz4 frame header: unsupported version or flags {flg:#x}", 4)
    if not flg & 0x20 or flg & 0x01:
        return None                           # linked blocks or a dictionary: whole
    block_sum, has_size, content_sum = flg & 0x10, flg & 0x08, flg & 0x04
    bmax = _BLOCK_MAX.get((bd >> 4) & 7)
    if bmax is None or bd & 0x8F:
        raise bad(f"bad lz4 frame header: block descriptor {bd:#x}", 5)
    size = struct.unpack_from("<Q", body, 6)[0] if has_size else None
    if not content_sum or size != clen:
        raise bad(f"lz4 frame declares {size} content bytes (checksum "
                  f"{'on' if content_sum else 'off'}); the header says {clen}", 4)
    p = 6 + 8 + 1                             # descriptor, content size, header checksum
    blocks: list[tuple[int, int, bool]] = []
    extra = 4 if block_sum else 0
    while True:
        if p + 4 > n:
            raise bad("lz4 frame is truncated (no end mark)", p)
        (word,) = _U32.unpack_from(body, p)
        p += 4
        if word == 0:
            break
        stored = word & 0x7FFFFFFF
        if stored > bmax or p + stored + extra > n:
            raise bad(f"lz4 frame does not decode: block {len(blocks)} of {stored} bytes "
                      "overruns the frame or the block size", p - 4)
        blocks.append((p, stored, bool(word >> 31)))
        p += stored + extra
    if p + 4 != n:
        raise bad(f"{n - p - 4} bytes after the lz4 frame" if p + 4 < n
                  else "lz4 frame is truncated (no content checksum)", p)
    if len(blocks) != -(-clen // bmax):
        raise bad(f"lz4 frame holds {len(blocks)} blocks of up to {bmax} bytes, the "
                  f"declared {clen} content bytes need {-(-clen // bmax)}", 6)
    return LazyContent(body, blocks, bmax, clen, where, base_offset)
