"""The newest segment and the replay's scans read a segment through a reused window
(segscan.SegmentWindows) instead of whole (issue 21, reopen). A window must change
nothing: the same records, the same end of data, the same first bad batch with the same
reason at the same offset, and the zero tail checked to its last byte."""

import random

import pytest
from test_log_support import build, image, lay_out, newest

from aurora_log.errors import CorruptionError
from aurora_log.local import segscan
from aurora_log.local.log import Log, _scan_tail, ffi, lib
from aurora_log.local.segscan import SegmentWindows

SEG = 64 << 10


def _whole(data: bytes, first: int, max_record: int):
    """The whole-file scan (what open() did before windows): end/bad and the records."""
    ts = _scan_tail(bytearray(data), first, max_record)
    return ts


def _windowed(path, first: int, max_record: int, window: int):
    fd = lib.au_open(str(path).encode(), 0, 0)
    assert fd >= 0
    try:
        size = lib.au_file_size(fd)
        ws = SegmentWindows(fd, path, 32, first, size, max_record, window=window)
        got = []
        for mv, recs, n in ws.records():
            got.extend((recs[i].lsn, recs[i].type, bytes(mv[recs[i].off:recs[i].off +
                                                              recs[i].len]))
                       for i in range(n))
        z = ws.first_nonzero_after() if ws.status == lib.AU_SCAN_END else -1
        return ws, got, z
    finally:
        lib.au_close(fd)


@pytest.fixture(scope="module")
def one_segment(tmp_path_factory):
    d = tmp_path_factory.mktemp("seg") / "store"
    # batches of 1..9 records of 20..700 bytes: many cross any small window's edge
    rng = random.Random(7)
    recs = []
    with Log.open(d, segment_bytes=SEG) as lg:
        i = 0
        while i < 160:
            k = rng.randrange(1, 10)
            chunk = [(1 + (j % 200), bytes([65 + j % 26]) * rng.randrange(20, 700))
                     for j in range(i, i + k)]
            last = lg.commit(chunk)
            recs.extend((last - len(chunk) + 1 + m, t, p) for m, (t, p) in enumerate(chunk))
            i += k
    files = image(d)
    assert len(files) == 1
    return recs, files


@pytest.mark.parametrize("window", [40, 333, 4096, 1 << 20])
def test_a_clean_segment_scans_the_same_through_any_window(one_segment, tmp_path, window):
    recs, files = one_segment
    d = lay_out(tmp_path / "s", files)
    path = d / "wal" / newest(files)
    ws, got, z = _windowed(path, 1, 16 << 20, window)
    ts = _whole(files[newest(files)], 1, 16 << 20)
    assert ws.status == lib.AU_SCAN_END and z == -1
    assert got == recs and ws.pos == ts.end and ws.next_lsn == ts.next_lsn
    assert ws.batches and ws.last_flags == ts.last_flags


@pytest.mark.parametrize("window", [40, 333, 4096])
def test_a_flipped_byte_is_found_where_the_whole_file_scan_finds_it(one_segment, tmp_path,
                                                                    window):
    """Any byte of the file flipped (data, padding, zero tail): the windowed scan stops
    at the same batch for the same reason, or finds the same first non-zero byte."""
    recs, files = one_segment
    name = newest(files)
    data = files[name]
    d = lay_out(tmp_path / "s", files)
    path = d / "wal" / name
    rng = random.Random(window)
    for _ in range(150):
        i = rng.randrange(32, len(data))
        img = bytearray(data)
        img[i] ^= 1 << rng.randrange(8)
        path.write_bytes(img)
        ts = _whole(bytes(img), 1, 16 << 20)
        ws, got, z = _windowed(path, 1, 16 << 20, window)
        assert ws.next_lsn == ts.next_lsn, i
        assert got == recs[:ws.next_lsn - 1], i          # only verified batches' records
        if ws.status == lib.AU_SCAN_BAD:
            assert (ws.pos, ws.reason) == (ts.bad_off, ts.reason), i
        else:
            assert ws.pos == ts.end, i
            first = lib.au_first_nonzero(ffi.from_buffer(img), ts.end, len(img))
            assert z == first, i
            # the whole-file scan reports exactly such a tail as bad at the end of data
            assert (ts.bad_off is not None) == (z >= 0), i


def test_records_from_an_lsn_start_at_the_batch_holding_it(one_segment, tmp_path):
    recs, files = one_segment
    d = lay_out(tmp_path / "s", files)
    path = d / "wal" / newest(files)
    fd = lib.au_open(str(path).encode(), 0, 0)
    try:
        for from_lsn in (1, 2, 50, 117, 160, 161, 500):
            ws = SegmentWindows(fd, path, 32, 1, lib.au_file_size(fd), 16 << 20, window=200)
            lsns = [recs[i].lsn for mv, recs, n in ws.records(from_lsn=from_lsn)
                    for i in range(n)]
            want = [r[0] for r in recs if r[0] >= from_lsn]
            assert lsns[len(lsns) - len(want):] == want
            assert all(x < from_lsn for x in lsns[:len(lsns) - len(want)])
            assert len(lsns) - len(want) < 9                 # at most one batch's worth
    finally:
        lib.au_close(fd)


@pytest.mark.parametrize("read_only", [False, True])
@pytest.mark.parametrize("where", ["first window", "last byte"])
def test_a_non_zero_byte_far_in_the_zero_tail_is_still_found(tmp_path, read_only, where):
    """open() checks the newest segment's zero tail a window at a time: a byte anywhere
    in it, up to the file's last, is the torn tail it always was (cut and reported at
    the end of data), with the default 64 MiB segment and 1 MiB window."""
    d = tmp_path / "s"
    recs, _crash, final = build(d, 30, segment_bytes=64 << 20)
    name = newest(final)
    path = d / "wal" / name
    end = _whole(final[name], 1, 16 << 20).end
    at = end + 100 if where == "first window" else (64 << 20) - 1
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(b"\x01")
    lg = Log.open(d, read_only=read_only)
    try:
        assert [(c.offset, c.reason) for c in lg.report.cuts] == \
            [(end, "non-zero bytes after the end of data")]
        assert [r[0] for r in lg.scan()] == [r[0] for r in recs]
    finally:
        lg.close()
    if not read_only:
        with open(path, "rb") as f:
            f.seek(at)
            assert f.read(1) == b"\0"                     # cut (zeroed), kept aside


def test_a_non_zero_byte_far_in_a_sealed_segments_zero_tail_is_corruption(tmp_path,
                                                                         monkeypatch):
    """A scan (replay, verify) checks every older segment's zero tail to its end through
    the window too."""
    monkeypatch.setattr(segscan, "WINDOW", 128)
    d = tmp_path / "s"
    # small records, then one too big for what is left: the roll leaves KiBs of zeros
    build(d, 41, segment_bytes=8192, payload_fn=lambda i: b"r" * (6000 if i == 40 else 50))
    files = image(d)
    assert len(files) >= 2
    oldest = sorted(files)[0]
    path = d / "wal" / oldest
    end = _whole(files[oldest], 1, 16 << 20).end
    last = len(files[oldest]) - 1
    assert last - end > 8 * 128 and files[oldest][end:] == bytes(last + 1 - end)
    with open(path, "r+b") as f:
        f.seek(last)
        f.write(b"\x02")
    with Log.open(d, read_only=True) as lg:
        with pytest.raises(CorruptionError) as ei:
            list(lg.scan())
    assert f"non-zero bytes after the end of data (first at offset {last})" in ei.value.reason
    assert (ei.value.file, ei.value.offset) == (str(path), end)


@pytest.mark.parametrize("shared", [False, True])
def test_replay_after_a_snapshot_through_small_windows_rebuilds_the_same_queue(
        tmp_path, monkeypatch, shared):
    """The first scan starts at open()'s last verified boundary below the snapshot's LSN
    (many marks with a small window): the queue is the one a full scan rebuilds."""
    import aurora_log
    from aurora_log import Job
    monkeypatch.setattr(segscan, "WINDOW", 700)
    d = tmp_path / "s"
    q = aurora_log.open(d, exclusive=not shared)
    ids = q.enqueue_many([Job("t", {"i": i, "pad": "y" * (i % 50)}) for i in range(300)])
    q.compact()
    more = [q.enqueue(Job("t", {"i": 300 + i})) for i in range(5)]
    done = q.claim("w")
    q.complete(done.id, done.token)
    q.close()
    q = aurora_log.open(d, exclusive=not shared)
    try:
        assert [j.id for j in q.list("pending", limit=1000)] == ids[1:] + more
        assert q.get(ids[0]).status == "completed"
    finally:
        q.close()


def test_a_file_shorter_than_the_scan_end_ends_the_scan(tmp_path):
    """A read that comes back short (the file ends before the scan's end: a foreign
    truncation) ends the scan where the file ends instead of reading on forever."""
    path = tmp_path / "short.seg"
    for size in (32, 33, 35, 64):
        path.write_bytes(bytes(size))
        fd = lib.au_open(str(path).encode(), 0, 0)
        try:
            ws = SegmentWindows(fd, path, 32, 1, 10_000, 1 << 20, window=40)
            assert list(ws.records()) == []
            assert (ws.status, ws.pos, ws.next_lsn) == (lib.AU_SCAN_END, 32, 1)
        finally:
            lib.au_close(fd)
