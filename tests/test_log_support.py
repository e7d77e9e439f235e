"""Helpers for the log tests (no tests here): build logs, take crash images, lay them out."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

from aurora_log.local.log import Log, crc32c

SEG_HDR = 32
BATCH_HDR = 32
REC_HDR = 17


def mask(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def payload(i: int, n: int | None = None) -> bytes:
    """Deterministic payload without zero bytes (so 'non-zero bytes cut' is predictable)."""
    n = 5 + (i * 7) % 23 if n is None else n
    return bytes(1 + (i * 31 + k) % 255 for k in range(n))


def image(directory) -> dict[str, bytes]:
    """The wal/ files (name -> bytes) as they are on disk now, read with plain os calls."""
    wal = Path(directory) / "wal"
    return {p.name: p.read_bytes() for p in sorted(wal.iterdir()) if p.name.endswith(".seg")}


def lay_out(directory, files: dict[str, bytes]) -> Path:
    """A fresh store directory holding exactly `files` in wal/."""
    d = Path(directory)
    if d.exists():
        shutil.rmtree(d)
    (d / "wal").mkdir(parents=True, mode=0o700)
    for name, data in files.items():
        (d / "wal" / name).write_bytes(data)
    return d


def build(directory, n: int, *, segment_bytes: int = 1 << 20, per_batch: int = 1,
          payload_fn=payload):
    """A log with n records, `per_batch` records per commit. Returns (records, crash image
    taken before close, final image)."""
    log = Log.open(directory, segment_bytes=segment_bytes)
    recs = []
    for start in range(0, n, per_batch):
        chunk = [(1 + (i % 250), payload_fn(i)) for i in range(start, min(n, start + per_batch))]
        last = log.commit(chunk)
        first = last - len(chunk) + 1
        recs.extend((first + k, t, p) for k, (t, p) in enumerate(chunk))
    crash = image(directory)
    log.close()
    return recs, crash, image(directory)


def batches(seg: bytes) -> list[tuple[int, int, int, int, int]]:
    """(offset, batch_len, first_lsn, count, flags) of every batch of a valid segment image."""
    out = []
    pos = SEG_HDR
    while pos + BATCH_HDR <= len(seg):
        blen, _crc, first, count, flags, _de = struct.unpack_from("<IIQIIQ", seg, pos)
        if blen == 0:
            break
        out.append((pos, blen, first, count, flags))
        pos += blen
    return out


def fix_batch_crc(buf: bytearray, pos: int) -> None:
    c = crc32c(bytes(buf[pos + 8:pos + 32]), crc32c(bytes(buf[pos:pos + 4])))
    struct.pack_into("<I", buf, pos + 4, mask(c))


def fix_record_crc(buf: bytearray, rpos: int) -> None:
    ln, _c, lsn = struct.unpack_from("<IIQ", buf, rpos)
    typ = buf[rpos + 16]
    c = crc32c(bytes([typ]) + struct.pack("<Q", lsn) + bytes(buf[rpos + 17:rpos + 17 + ln]))
    struct.pack_into("<I", buf, rpos + 4, mask(c))


def fix_segment_crc(buf: bytearray) -> None:
    struct.pack_into("<I", buf, 28, mask(crc32c(bytes(buf[:28]))))


def read_all(directory, **kw):
    with Log.open(directory, **kw) as log:
        return log.report, list(log.scan())


def check_read_only(directory):
    """(report, records) from a read-only open + full scan (writes nothing)."""
    log = Log.open(directory, read_only=True)
    return log.report, list(log.scan())


def newest(files: dict[str, bytes]) -> str:
    return sorted(files)[-1]


def mode(path) -> int:
    return os.stat(path).st_mode & 0o777


def fast_dir(tmp_path) -> Path:
    """A scratch directory on tmpfs when there is one (for tests that rewrite small files
    thousands of times and test the format, not the disk); else tmp_path. Caller removes."""
    import tempfile
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        return Path(tempfile.mkdtemp(prefix="aurora-test-", dir="/dev/shm"))
    return Path(tmp_path)
