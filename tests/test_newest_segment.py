"""The newest segment cannot lose bytes or vanish in a crash, so either is refused:
a newest segment shorter than its header says, and a missing newest segment (the one
before it ends with a SEAL that announces it). A roll's SEAL torn by a crash (the next
segment exists and is empty) is cut and reported. Issue 14, item 4, and FORMAT.md's
"segments are never recycled" for a roll out of a segment that holds no record."""

import os
from pathlib import Path

import pytest
from test_log_support import BATCH_HDR, SEG_HDR, batches, image, lay_out, newest

from aurora_log.errors import CorruptionError
from aurora_log.local.log import Log

SEG = 4096


def _closed_log(d, n=200):
    with Log.open(d, segment_bytes=SEG) as log:
        for i in range(n):
            log.commit([(1, b"job %d " % i + b"x" * 40)])
    return [b"job %d " % i + b"x" * 40 for i in range(n)]


@pytest.mark.parametrize("read_only", [False, True])
def test_a_short_newest_segment_is_corruption_not_a_torn_tail(store_dir, read_only):
    _closed_log(store_dir)
    path = store_dir / "wal" / newest(image(store_dir))
    data = path.read_bytes()
    end = batches(data)[-1][0]
    path.write_bytes(data[:end // 2])
    with pytest.raises(CorruptionError) as ei:
        Log.open(store_dir, segment_bytes=SEG, read_only=read_only)
    assert "shorter than its preallocated size" in ei.value.reason
    assert ei.value.file == str(path)
    assert path.stat().st_size == end // 2          # nothing was changed


@pytest.mark.parametrize("read_only", [False, True])
def test_a_deleted_newest_segment_is_corruption(store_dir, read_only):
    _closed_log(store_dir)
    names = sorted(image(store_dir))
    assert len(names) >= 3
    os.unlink(store_dir / "wal" / names[-1])
    with pytest.raises(CorruptionError) as ei:
        Log.open(store_dir, segment_bytes=SEG, read_only=read_only)
    assert "missing" in ei.value.reason and names[-1] in ei.value.reason
    assert sorted(image(store_dir)) == names[:-1]


def test_a_torn_roll_seal_before_an_empty_next_segment_is_cut_and_kept(tmp_path):
    recs = _closed_log(tmp_path / "a")
    files = image(tmp_path / "a")
    names = sorted(files)
    prev, last = names[-2], names[-1]
    seal_off, blen, first, count, flags = batches(files[prev])[-1]
    assert (blen, count, flags) == (BATCH_HDR, 0, 3)        # SEAL | NEXT
    torn = bytearray(files[prev])
    torn[seal_off + 12:seal_off + BATCH_HDR] = bytes(BATCH_HDR - 12)   # only a prefix landed
    empty = files[last][:SEG_HDR] + bytes(len(files[last]) - SEG_HDR)  # nothing written yet
    d = lay_out(tmp_path / "b", {**{n: files[n] for n in names[:-2]}, prev: bytes(torn),
                                 last: empty})
    kept_recs = recs[:first - 1]
    with Log.open(d, segment_bytes=SEG, read_only=True) as ro:
        (cut,) = ro.report.cuts
        assert cut.file.endswith(prev) and cut.offset == seal_off and cut.kept_as is None
        assert [bytes(p) for _, _, p in ro.scan()] == kept_recs
    with Log.open(d, segment_bytes=SEG) as log:
        (cut,) = log.report.cuts
        assert cut.file.endswith(prev) and cut.offset == seal_off and "SEAL" in cut.reason
        assert Path(cut.kept_as).read_bytes() == bytes(torn[seal_off:seal_off + 12]).rstrip(b"\0")
        assert [bytes(p) for _, _, p in log.scan()] == kept_recs
        log.commit([(1, b"after")])
    with Log.open(d, segment_bytes=SEG) as log:
        assert not log.report.cuts
        assert [bytes(p) for _, _, p in log.scan()] == kept_recs + [b"after"]


def test_a_torn_seal_is_damage_when_the_next_segment_holds_records(tmp_path):
    _closed_log(tmp_path / "a")
    files = image(tmp_path / "a")
    names = sorted(files)
    prev = names[-2]
    seal_off = batches(files[prev])[-1][0]
    torn = bytearray(files[prev])
    torn[seal_off + 12:seal_off + BATCH_HDR] = bytes(BATCH_HDR - 12)
    d = lay_out(tmp_path / "b", {**files, prev: bytes(torn)})
    with Log.open(d, segment_bytes=SEG) as log, pytest.raises(CorruptionError):
        list(log.scan())


def test_a_roll_out_of_a_segment_with_no_record_keeps_the_log_whole(store_dir):
    with Log.open(store_dir, segment_bytes=SEG) as log:
        assert log.commit([(1, b"a" * 10000)]) == 1     # bigger than the first segment
    with Log.open(store_dir, segment_bytes=SEG) as log:
        assert [bytes(p) for _, _, p in log.scan()] == [b"a" * 10000]
        assert log.commit([(1, b"b")]) == 2
    assert sorted(image(store_dir)) == ["00000000000000000001.seg"]
    with Log.open(store_dir, segment_bytes=SEG) as log:
        assert [bytes(p) for _, _, p in log.scan()] == [b"a" * 10000, b"b"]
