"""Durability evidence (native/FORMAT.md, recovery rule 3) must be something no payload can
fake: a later batch that verifies as a whole, reached by following batch lengths from the
bad offset. Header-shaped bytes inside an unverified payload are not evidence, so a genuine
torn tail is still cut. Issue 14, item 2."""

import struct
from pathlib import Path

import pytest
from test_log_support import (
    BATCH_HDR,
    REC_HDR,
    batches,
    fix_batch_crc,
    image,
    lay_out,
    payload,
)

from aurora_log.errors import CorruptionError
from aurora_log.local.log import Log


def _fake_seal(offset: int, lsn: int) -> bytearray:
    """A complete, valid SEAL batch as it would sit at `offset`, claiming durable_end ==
    offset (what a genuine SEAL written by close() looks like)."""
    h = bytearray(struct.pack("<IIQIIQ", BATCH_HDR, 0, lsn, 0, 1, offset))
    fix_batch_crc(h, 0)
    return h


def _crash_image_with_fake_in_payload(d):
    """Two good records, then a third whose payload holds a valid SEAL at an 8-aligned
    file offset. Returns (records, crash image name, bytes, offset of the third batch)."""
    log = Log.open(d, segment_bytes=65536)
    recs = [(1, payload(0)), (1, payload(1))]
    for r in recs:
        log.commit([r])
    name, seg = next(iter(image(d).items()))
    x = batches(seg)[-1][0] + batches(seg)[-1][1]          # where the third batch goes
    start = x + BATCH_HDR + REC_HDR                        # its payload's file offset
    y = (start + 8 + 7) & ~7
    body = bytearray(b"\x5a" * 400)
    body[y - start:y - start + BATCH_HDR] = _fake_seal(y, 4)
    log.commit([(1, bytes(body))])
    name, seg = next(iter(image(d).items()))
    log.close()
    return recs, name, seg, x, y


def test_a_header_inside_a_torn_payload_is_not_evidence(tmp_path):
    recs, name, seg, x, y = _crash_image_with_fake_in_payload(tmp_path / "a")
    torn = bytearray(seg)
    # the last sector-sized piece of the third batch never reached the disk
    end = x + batches(bytes(seg))[-1][1]
    torn[y + BATCH_HDR + 64:end] = bytes(end - (y + BATCH_HDR + 64))
    d = lay_out(tmp_path / "b", {name: bytes(torn)})
    with Log.open(d, segment_bytes=65536) as log:
        (cut,) = log.report.cuts
        assert cut.offset == x and cut.lsn == 3
        assert [(t, bytes(p)) for _, t, p in log.scan()] == recs
        assert Path(cut.kept_as).read_bytes() == bytes(torn[x:y + BATCH_HDR + 64]).rstrip(b"\0")


def test_a_genuine_later_batch_reached_through_the_chain_is_evidence(tmp_path):
    recs = [(1, payload(0)), (1, payload(1))]
    d0 = tmp_path / "closed"
    log = Log.open(d0, segment_bytes=65536)
    for r in recs + [(1, b"third")]:
        log.commit([r])
    log.close()                                   # the SEAL after it: bytes were synced
    (name2, closed), = image(d0).items()
    bl = batches(closed)
    rpos = bl[-2][0] + BATCH_HDR                  # the third record, before the SEAL
    bad = bytearray(closed)
    bad[rpos + REC_HDR] ^= 0x01                   # a bit flip: its record crc fails
    d = lay_out(tmp_path / "b", {name2: bytes(bad)})
    with pytest.raises(CorruptionError) as ei:
        Log.open(d, segment_bytes=65536)
    assert ei.value.offset == bl[-2][0] and "fdatasynced" in str(ei.value)
