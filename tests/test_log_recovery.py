"""Recovery: torn tails at every offset, zero/garbage/stale tails, bit flips, lying fields.
The rules are native/FORMAT.md "Recovery rules"."""

import random
import shutil
import struct
from pathlib import Path

import pytest

from aurora_log.errors import CorruptionError
from aurora_log.local.log import Log

from test_log_support import (BATCH_HDR, SEG_HDR, batches, build, check_read_only, fast_dir,
                              fix_batch_crc, fix_record_crc, fix_segment_crc, lay_out, newest,
                              payload, read_all)


def _reopen_clean_after_append(d, prefix):
    with Log.open(d, segment_bytes=8192) as log:
        lsn = log.append(9, b"after")
        log.sync(lsn)
        assert lsn == len(prefix) + 1
    rep, recs = read_all(d, segment_bytes=8192)
    assert not rep.truncated
    assert recs == prefix + [(lsn, 9, b"after")]


@pytest.fixture(scope="module")
def torn_fixture(tmp_path_factory):
    d = tmp_path_factory.mktemp("torn") / "store"
    recs, crash, _final = build(d, 12, segment_bytes=8192)
    return recs, crash


@pytest.mark.parametrize("variant", ["truncated", "zeroed"])
def test_torn_tail_at_every_offset_of_last_4_records(torn_fixture, tmp_path, variant):
    recs, crash = torn_fixture
    name = newest(crash)
    data = crash[name]
    bl = batches(data)
    assert len(bl) == 12 and all(b[3] == 1 for b in bl)
    start = bl[-4][0]
    end = bl[-1][0] + bl[-1][1]
    base = fast_dir(tmp_path)
    try:
        _torn(recs, data, name, bl, start, end, base / "s", variant)
    finally:
        if base != tmp_path:
            shutil.rmtree(base, ignore_errors=True)


def _torn(recs, data, name, bl, start, end, d, variant):
    for off in range(start, end + 1):
        img = data[:off] if variant == "truncated" else data[:off] + bytes(len(data) - off)
        lay_out(d, {name: img})
        if variant == "truncated":
            # a segment is preallocated and fsynced before it is used, and writes never
            # change its size: a short newest segment lost bytes, it is not a torn tail
            for ro in (True, False):
                with pytest.raises(CorruptionError) as ei:
                    Log.open(d, segment_bytes=8192, read_only=ro)
                assert "shorter than its preallocated size" in ei.value.reason
                assert ei.value.offset == off
            continue
        # a batch survives if all its bytes are there (zeroed variant: a tear inside its zero
        # padding changes nothing)
        whole = [b for b in bl if img[b[0]:b[0] + b[1]] == data[b[0]:b[0] + b[1]]]
        keep = sum(b[3] for b in whole)
        x = whole[-1][0] + whole[-1][1] if whole else SEG_HDR
        cut = img[x:off].rstrip(b"\0")
        with Log.open(d, segment_bytes=8192) as log:
            rep = log.report
            got = list(log.scan())
        assert got == recs[:keep], off
        if cut or variant == "truncated":
            # (a truncated file is always reported: it is shorter than its header says)
            [c] = rep.cuts
            assert (c.offset, c.bytes, c.lsn) == (x, len(cut), keep + 1), off
            if cut:
                assert Path(c.kept_as).read_bytes() == cut
                assert Path(c.kept_as).stat().st_mode & 0o777 == 0o600
            assert rep.bytes_truncated == len(cut)
        else:
            assert not rep.truncated, off
        _reopen_clean_after_append(d, recs[:keep])


TAIL_SIZES = list(range(1, 33)) + [511, 512, 4096, 65536]


@pytest.fixture(scope="module")
def sealed_fixture(tmp_path_factory):
    d = tmp_path_factory.mktemp("sealed") / "store"
    recs, _crash, final = build(d, 10, segment_bytes=256 << 10)
    return recs, final


@pytest.mark.parametrize("kind", ["zero", "garbage", "stale"])
def test_tails_after_end_of_data(sealed_fixture, tmp_path, kind):
    recs, final = sealed_fixture
    name = newest(final)
    data = final[name]
    bl = batches(data)
    assert bl[-1][4] == 1  # SEAL last
    x = bl[-1][0] + bl[-1][1]
    rng = random.Random(kind)
    base = fast_dir(tmp_path)
    try:
        _tails(recs, data, name, x, rng, base / "s", kind)
    finally:
        if base != tmp_path:
            shutil.rmtree(base, ignore_errors=True)


def _tails(recs, data, name, x, rng, d, kind):
    for n in TAIL_SIZES:
        if kind == "zero":
            tail = bytes(n)
        elif kind == "garbage":
            tail = rng.randbytes(n)
        else:  # stale copy of earlier bytes of this log (valid old batches)
            tail = data[SEG_HDR:SEG_HDR + n]
        img = bytearray(data)
        img[x:x + n] = tail
        lay_out(d, {name: bytes(img)})
        cut = tail.rstrip(b"\0")
        with Log.open(d, segment_bytes=8192) as log:
            rep = log.report
            assert list(log.scan()) == recs, (kind, n)
        if cut:
            [c] = rep.cuts
            assert (c.offset, c.bytes) == (x, len(cut)), (kind, n)
        else:
            assert not rep.truncated
        _reopen_clean_after_append(d, recs)


@pytest.fixture(scope="module")
def three_segments(tmp_path_factory):
    d = tmp_path_factory.mktemp("three") / "store"
    recs, _crash, final = build(d, 100, segment_bytes=4096, per_batch=3,
                                payload_fn=lambda i: payload(i, 60 + i % 40))
    assert len(final) == 3
    return recs, final


def test_5000_bit_flips_all_detected(three_segments, tmp_path):
    """Every flipped bit of a 3-segment log is detected: open or scan raises
    CorruptionError, or open reports a cut tail. None is silent. Bits in zero padding and
    in the zero space after the end of data count too (both are checked to be zero)."""
    recs, final = three_segments
    # 10,000 small file rewrites: on tmpfs when there is one (the format is what is tested)
    base = fast_dir(tmp_path)
    try:
        _flips(recs, final, lay_out(base / "s", final))
    finally:
        if base != tmp_path:
            shutil.rmtree(base, ignore_errors=True)


def _flips(recs, final, d):
    names = sorted(final)
    rng = random.Random(20261129)
    raised = cut = 0
    for _ in range(5000):
        name = rng.choice(names)
        path = d / "wal" / name
        data = final[name]
        i = rng.randrange(len(data))
        img = bytearray(data)
        img[i] ^= 1 << rng.randrange(8)
        path.write_bytes(img)
        try:
            rep, got = check_read_only(d)
        except CorruptionError as e:
            assert e.file and e.offset is not None
            raised += 1
        else:
            assert rep.truncated, (name, i)
            assert got == recs[:len(got)]   # what is kept is an exact prefix
            cut += 1
        path.write_bytes(data)
    print(f"bit flips: {raised} raised CorruptionError, {cut} reported as a torn tail")
    assert raised + cut == 5000


# ------------------------------------------------------------------ lying header fields

@pytest.fixture(scope="module")
def two_segments(tmp_path_factory):
    d = tmp_path_factory.mktemp("two") / "store"
    recs, _crash, final = build(d, 40, segment_bytes=4096, per_batch=2,
                                payload_fn=lambda i: payload(i, 70))
    assert len(final) >= 2
    return recs, final


def _lie_batch(buf, pos, field, value):
    fmt = {"len": ("<I", 0), "first": ("<Q", 8), "count": ("<I", 16), "flags": ("<I", 20)}
    f, off = fmt[field]
    if callable(value):
        value = value(struct.unpack_from(f, buf, pos + off)[0])
    struct.pack_into(f, buf, pos + off, value)
    fix_batch_crc(buf, pos)


def _lie_record(buf, rpos, field, value):
    if field == "len":
        old = struct.unpack_from("<I", buf, rpos)[0]
        struct.pack_into("<I", buf, rpos, value(old))
        return  # the length is not under the record crc: a lie shows as a bad crc/extent
    if field == "type":
        buf[rpos + 16] = value
    elif field == "lsn":
        old = struct.unpack_from("<Q", buf, rpos + 8)[0]
        struct.pack_into("<Q", buf, rpos + 8, value(old))
    fix_record_crc(buf, rpos)


BATCH_LIES = [
    ("len", 0, None),
    ("len", 0xFFFFFFF8, "bad batch length"),
    ("len", 0x7FFFFFF8, "bad batch length"),
    ("len", lambda v: v + 8, None),
    ("len", lambda v: v - 8, None),
    ("len", lambda v: v + 1, "bad batch length"),
    ("first", lambda v: v + 1, "LSN gap"),
    ("first", lambda v: v - 1, "LSN goes backwards"),
    ("count", lambda v: v + 1, None),
    ("count", lambda v: v - 1, "bad batch padding"),
    ("flags", 2, "unknown batch flags"),
    ("flags", 1, "SEAL batch carries records"),
]
RECORD_LIES = [
    ("len", lambda v: 0, None),
    ("len", lambda v: 0xFFFFFFFF, "record length over the maximum"),
    ("len", lambda v: v + 1, None),
    ("len", lambda v: v - 1, None),
    ("type", 0, "record type 0 (invalid)"),
    ("lsn", lambda v: v + 1, "record LSN out of sequence"),
    ("lsn", lambda v: v - 1, "record LSN out of sequence"),
]


@pytest.mark.parametrize("where", ["old segment", "newest segment"])
@pytest.mark.parametrize("lie", BATCH_LIES + [("rec",) + r for r in RECORD_LIES],
                         ids=lambda lie: "-".join(str(x) if not callable(x) else "f" for x in lie))
def test_lying_fields_raise_corruption(two_segments, tmp_path, where, lie):
    recs, final = two_segments
    names = sorted(final)
    name = names[0] if where == "old segment" else names[-1]
    buf = bytearray(final[name])
    pos, _blen, first, _count, _flags = batches(bytes(buf))[0]
    if lie[0] == "rec":
        _lie_record(buf, pos + BATCH_HDR, lie[1], lie[2])
        reason = lie[3]
    else:
        _lie_batch(buf, pos, lie[0], lie[1])
        reason = lie[2]
    d = lay_out(tmp_path / "s", {**final, name: bytes(buf)})
    if where == "newest segment" and lie[0] == "len":
        # A lying batch_len leads the chain of batch lengths off the batches, so open
        # finds no evidence reachable from it (FORMAT.md rule 3: evidence is only what
        # the chain reaches, never bytes that could sit inside a payload): it is cut and
        # kept like a torn tail, reported; a full scan of the kept bytes shows them.
        rep, got = read_all(d)
        (cut,) = rep.cuts
        assert (cut.offset, cut.lsn) == (pos, first) and cut.kept_as
        assert got == recs[:first - 1]
        return
    with pytest.raises(CorruptionError) as ei:
        read_all(d)  # newest: open sees later valid batches (durable_end) -> corruption
    e = ei.value
    assert e.file.endswith(name)
    assert e.offset == pos and e.lsn == first
    if reason:
        assert e.reason.startswith(reason), e.reason


def test_segment_header_lies(two_segments, tmp_path):
    _recs, final = two_segments
    names = sorted(final)
    for name in names:
        for lie in ("version", "limit", "v1 flags", "first", "size", "magic", "truncated"):
            buf = bytearray(final[name])
            if lie == "version":
                struct.pack_into("<I", buf, 8, 3)
                fix_segment_crc(buf)
            elif lie == "limit":                 # over the largest max_record_bytes
                struct.pack_into("<I", buf, 12, (255 << 20) + 1)
                fix_segment_crc(buf)
            elif lie == "v1 flags":              # version 1 kept flags there, always 0
                struct.pack_into("<II", buf, 8, 1, 1 << 20)
                fix_segment_crc(buf)
            elif lie == "first":
                struct.pack_into("<Q", buf, 16, int(name[:20]) + 1)
                fix_segment_crc(buf)
            elif lie == "size":
                struct.pack_into("<I", buf, 24, 1)
                fix_segment_crc(buf)
            elif lie == "magic":
                buf[0] ^= 0xFF
                fix_segment_crc(buf)
            else:
                del buf[20:]
            d = lay_out(tmp_path / "s", {**final, name: bytes(buf)})
            with pytest.raises(CorruptionError) as ei:
                read_all(d)
            assert ei.value.file.endswith(name) and ei.value.offset == 0


def test_truncated_old_segment_is_corruption(two_segments, tmp_path):
    _recs, final = two_segments
    name = sorted(final)[0]
    end = batches(final[name])[-1]
    d = lay_out(tmp_path / "s", {**final, name: final[name][:end[0] + end[1]]})
    with pytest.raises(CorruptionError) as ei:
        read_all(d)
    assert "shorter than its preallocated size" in ei.value.reason


def test_missing_middle_segment_is_an_lsn_gap(tmp_path):
    recs, _crash, final = build(tmp_path / "a", 60, segment_bytes=4096,
                                payload_fn=lambda i: payload(i, 90))
    names = sorted(final)
    assert len(names) >= 3
    del final[names[1]]
    d = lay_out(tmp_path / "s", final)
    for ro in (False, True):
        # found at open: the segment before the gap is sealed for the missing one
        with pytest.raises(CorruptionError) as ei:
            Log.open(d, read_only=ro)
        assert "LSN gap between segments" in ei.value.reason
        assert ei.value.file.endswith(names[0]) and ei.value.lsn == int(names[1][:20])


def test_damage_before_a_later_durable_batch_is_corruption_not_a_tear(tmp_path):
    recs, crash, final = build(tmp_path / "a", 6, segment_bytes=8192)
    name = newest(crash)
    bl = batches(crash[name])
    # unclean image: damage in batch 3 of 6; batches 4.. say (durable_end) it was synced
    img = bytearray(crash[name])
    img[bl[2][0] + BATCH_HDR + 5] ^= 0x40
    d = lay_out(tmp_path / "s", {name: bytes(img)})
    with pytest.raises(CorruptionError) as ei:
        read_all(d)
    assert ei.value.offset == bl[2][0] and ei.value.lsn == 3
    assert "fdatasynced" in ei.value.reason
    # the same damage in the LAST batch of the unclean image is a torn tail: cut + report
    img = bytearray(crash[name])
    img[bl[-1][0] + BATCH_HDR + 5] ^= 0x40
    d = lay_out(tmp_path / "s", {name: bytes(img)})
    rep, got = read_all(d)
    assert got == recs[:5] and rep.cuts[0].offset == bl[-1][0]
    # ...but after a clean close the SEAL proves the last batch was synced: corruption
    fbl = batches(final[name])
    assert fbl[-1][4] == 1
    img = bytearray(final[name])
    img[fbl[-2][0] + BATCH_HDR + 5] ^= 0x40
    d = lay_out(tmp_path / "s", {name: bytes(img)})
    with pytest.raises(CorruptionError):
        read_all(d)


def test_leftover_tmp_segment_removed_and_broken_files_numbered(tmp_path):
    recs, crash, _final = build(tmp_path / "a", 5, segment_bytes=8192)
    name = newest(crash)
    d = lay_out(tmp_path / "s", {name: crash[name][:-1] if False else crash[name]})
    (d / "wal" / "00000000000000000099.seg.tmp").write_bytes(b"partial")
    for n in (1, 2):
        # tear the tail again and again: kept as .broken-1, .broken-2
        p = d / "wal" / name
        img = bytearray(p.read_bytes())
        end = batches(bytes(img))[-1]
        img[end[0] + end[1]:end[0] + end[1] + 3] = b"\x07\x07\x07"
        p.write_bytes(bytes(img))
        with Log.open(d, segment_bytes=8192) as log:
            assert log.report.cuts[0].kept_as.endswith(f".broken-{n}")
            if n == 1:
                assert log.report.removed_tmp == ["00000000000000000099.seg.tmp"]
    assert not (d / "wal" / "00000000000000000099.seg.tmp").exists()
