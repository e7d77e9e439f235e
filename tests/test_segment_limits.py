"""The record limit a store was written with travels with it, in every segment header
(format version 2); an opener's own max_record_bytes applies only to what it writes.
Issue 14, item 1."""

import shutil
import struct

from test_log_support import fix_segment_crc, image, lay_out

import aurora_log
from aurora_log import Job
from aurora_log.local.log import Log

BIG = 20 << 20


def _big(i=0):
    return bytes([1 + i]) * BIG


def test_a_big_record_survives_a_kill_and_a_reopen_with_the_default_limit(tmp_path):
    d = tmp_path / "s"
    log = Log.open(d, max_record_bytes=32 << 20, segment_bytes=1 << 20)
    log.commit([(1, b"small")])
    log.commit([(1, _big())])
    crash = image(d)                     # what a kill -9 leaves: no SEAL, no close
    log.close()
    killed = lay_out(tmp_path / "killed", crash)
    for d2 in (killed, d):
        with Log.open(d2) as again:      # the default limit, 16 MiB
            assert not again.report.cuts
            got = [bytes(p) for _, _, p in again.scan()]
            assert got == [b"small", _big()]
            again.commit([(1, b"after")])
        with Log.open(d2, read_only=True) as ro:
            assert [len(p) for _, _, p in ro.scan()] == [5, BIG, 5]


def test_an_opener_with_a_bigger_limit_writes_into_a_segment_that_allows_it(tmp_path):
    d = tmp_path / "s"
    with Log.open(d, segment_bytes=1 << 20) as log:
        log.commit([(1, b"a")])
    with Log.open(d, max_record_bytes=32 << 20, segment_bytes=1 << 20) as log:
        log.commit([(1, _big(1))])
        crash = image(d)
    for d2 in (d, lay_out(tmp_path / "killed", crash)):
        with Log.open(d2) as again:
            assert not again.report.cuts
            assert [bytes(p) for _, _, p in again.scan()] == [b"a", _big(1)]


def test_the_queue_reopened_with_defaults_keeps_a_job_written_under_bigger_limits(store_dir):
    with aurora_log.open(store_dir, max_payload_bytes=32 << 20, max_record_bytes=32 << 20,
                         reaper_interval=None, auto_compact=False) as q:
        jid = q.enqueue(Job.new("big").add_field("blob", "x" * BIG))
    with aurora_log.open(store_dir, reaper_interval=None, auto_compact=False) as q:
        job = q.get(jid)
        assert job is not None and len(job.payload["blob"]) == BIG


def test_version_1_segments_are_still_read(tmp_path):
    d = tmp_path / "s"
    with Log.open(d, segment_bytes=4096) as log:
        for i in range(40):
            log.commit([(1, b"r%d" % i)])
    files = image(d)
    for name, data in files.items():      # rewrite every header as version 1 wrote it
        buf = bytearray(data)
        struct.pack_into("<II", buf, 8, 1, 0)
        fix_segment_crc(buf)
        files[name] = bytes(buf)
    d1 = lay_out(tmp_path / "v1", files)
    with Log.open(d1, segment_bytes=4096) as log:
        assert [bytes(p) for _, _, p in log.scan()] == [b"r%d" % i for i in range(40)]
    shutil.rmtree(d1)
