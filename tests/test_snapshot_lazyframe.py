"""Snapshots read lazily (lazyframe.py): a big snapshot's payloads (the tails section) stay
compressed until a job is touched; the state is the eager load's, and a broken frame is
refused with file, offset and reason, at load for its structure, at touch for a block."""

import random
import uuid

import pytest

from aurora_log.errors import CorruptionError
from aurora_log.local import records as R
from aurora_log.local import snapfile as F
from aurora_log.local.lazyframe import LazyContent, open_frame
from aurora_log.local.state import State
from aurora_log.local.table import LazyJobs
from test_snapshot_v2 import _history


def _big(seed=3, n=4000, form="uuid"):
    """A state whose snapshot content spans many 64 KiB lz4 blocks: _history's mix of
    jobs, then n plain ones with payloads lz4 cannot shrink much."""
    src, now = _history(seed, 200, form, touch=True)
    rnd = random.Random(seed)
    for i in range(n):
        jid = str(uuid.UUID(int=rnd.getrandbits(128), version=4)) if form == "uuid" else \
            f"j{i + 1000:05d}" if form == "fixed" else f"j{i + 1000}" + "x" * (i % 3)
        rec = R.Enqueue(jid, "t", "a", 1 + i % 4, 1, now + i, now + i, None, None, 30_000,
                        None, b'{"r":"%s"}' % rnd.randbytes(60).hex().encode())
        src.apply(src.last_lsn + 1, R.ENQUEUE, rec)
    return src, now, F.encode_state(src, src.last_lsn, now)


def _load(data, lazy=True, monkeypatch=None):
    monkeypatch.setattr(F, "LAZY_MIN_CONTENT", 0 if lazy else 1 << 62)
    return F.decode_snapshot(data, "big.snap")[1]


def _content_of(state) -> LazyContent:
    fill = state.jobs._base.fill
    assert fill is not None
    return fill.__self__


def _drain(s, now):
    out = []
    while (j := s.pick(now)) is not None:
        s.apply(s.last_lsn + 1, R.CLAIM, s.plan_claim(j, now, b"%08d" % len(out), "w"))
        out.append((j, s.get(j).payload))
    return out


@pytest.mark.parametrize("form", ["uuid", "fixed", "var"])
def test_a_lazy_load_is_the_eager_load(monkeypatch, form):
    src, now, data = _big(form=form)
    eager = _load(data, False, monkeypatch)
    lazy = _load(data, True, monkeypatch)
    assert type(lazy.jobs) is LazyJobs and eager.jobs._base.fill is None
    lc = _content_of(lazy)
    blocks = len(lc._filled)
    assert blocks > 5 and 0 < lc._left < blocks      # the tails' blocks wait
    later = now + 10_000_000
    assert _drain(lazy, later) == _drain(eager, later)
    assert lazy.fingerprint() == eager.fingerprint()


def test_touching_one_job_fills_only_its_blocks(monkeypatch):
    src, now, data = _big()
    lazy = _load(data, True, monkeypatch)
    lc = _content_of(lazy)
    left = lc._left
    base = lazy.jobs._base
    k = base.n // 2
    job = lazy.get(base.id(k))
    assert job is not None and job.to_dict() == src.get(base.id(k)).to_dict()
    assert left - 2 <= lc._left < left                   # one block, two at a boundary
    lazy.materialize()                                   # everything, same as the source
    assert lc._left == 0
    assert lazy.fingerprint() == State.from_export(list(src.export())).fingerprint()


def test_a_small_snapshot_loads_whole(monkeypatch):
    src, now = _history(4, 50)
    data = F.encode_state(src, src.last_lsn, now)
    assert len(data) < F.LAZY_MIN_CONTENT
    s = F.decode_snapshot(data, "s.snap")[1]
    assert s.jobs._base.fill is None


def _reframed(data, body):
    info = F.read_header(data)
    return F._frame(info.version, info.lsn, info.items, bytes(body), info.content_len,
                    info.max_at_ms)


def test_a_block_that_does_not_decode_is_reported_when_touched(monkeypatch):
    src, now, data = _big()
    info = F.read_header(data)
    body = bytearray(data[F.HEADER:])
    lc = open_frame(memoryview(bytes(body)), info.content_len, "big.snap", F.HEADER)
    lazy = _load(data, True, monkeypatch)
    waiting = [j for j, f in enumerate(_content_of(lazy)._filled) if not f]
    j = waiting[len(waiting) // 2]
    off, size, _ = lc._blocks[j]
    body[off:off + size] = b"\xff" * size              # a writer bug: the crc agrees
    bad = _reframed(data, body)
    s = _load(bad, True, monkeypatch)                   # loads: the block is not read
    with pytest.raises(CorruptionError, match="does not decode") as e:
        s.materialize()
    assert e.value.file == "big.snap" and e.value.offset == F.HEADER + off
    with pytest.raises(CorruptionError, match="does not decode"):
        _load(bad, False, monkeypatch)                  # the eager load refuses it at once


@pytest.mark.parametrize("cut,match", [
    ("end", "truncated"), ("extra", "bytes after the lz4 frame"),
    ("size", "declares"), ("block", "overruns")])
def test_a_broken_frame_is_refused_at_load(monkeypatch, cut, match):
    src, now, data = _big()
    body = bytearray(data[F.HEADER:])
    if cut == "end":
        body = body[:-5]
    elif cut == "extra":
        body += b"\0" * 4
    elif cut == "size":
        body[6] ^= 1                                    # the declared content size
    else:
        body[15:19] = (0x7FFFFFF0).to_bytes(4, "little")   # the first block's length
    monkeypatch.setattr(F, "LAZY_MIN_CONTENT", 0)
    with pytest.raises(CorruptionError, match=match) as e:
        F.decode_snapshot(_reframed(data, body), "big.snap")
    assert e.value.file == "big.snap" and e.value.offset is not None


def test_unique_keys_in_lazy_tails_are_checked_at_load(monkeypatch):
    src, now, data = _big(seed=5)
    lazy = _load(data, True, monkeypatch)
    assert lazy._unique == State.from_export(list(src.export()))._unique
    assert any(lazy._unique)


def test_threads_filling_at_once_see_every_block(monkeypatch):
    """A compaction's prebuild fills every block outside the queue lock while claims read
    single jobs: each block is written once and none is skipped."""
    import threading
    src, now, data = _big(seed=7)
    lazy = _load(data, True, monkeypatch)
    base = lazy.jobs._base
    lc = _content_of(lazy)
    order = list(range(base.n))
    random.Random(1).shuffle(order)
    blobs = {}

    def reader(part):
        for k in part:
            blobs[k] = base.blob(k)
    ts = [threading.Thread(target=reader, args=(order[i::4],)) for i in range(4)]
    ts.append(threading.Thread(target=base.build))
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert lc._left == 0 and all(lc._filled)
    eager = _load(data, False, monkeypatch).jobs._base
    assert all(blobs[k] == eager.blob(k) for k in range(base.n))


def _ids_blocks(state) -> range:
    """The lz4 blocks wholly inside a lazily loaded state's ids section (the first and
    the last may share bytes with the sections around it, which are read at load)."""
    base = state.jobs._base
    bmax = _content_of(state)._bmax
    return range(-(-base.id_at // bmax), (base.id_at + 16 * base.n) // bmax)


def test_uuid_ids_stay_compressed_until_one_is_read_or_looked_up(monkeypatch):
    """Issue 21: a reopen decompresses no id; reading one job's id fills its block only,
    a lookup by id (the index) fills the section."""
    src, now, data = _big(n=20000)
    lazy = _load(data, True, monkeypatch)
    lc = _content_of(lazy)
    blocks = _ids_blocks(lazy)
    assert len(blocks) >= 3 and not any(lc._filled[j] for j in blocks)
    base = lazy.jobs._base
    k = (blocks[1] * lc._bmax - base.id_at) // 16 + 1     # an id inside the 2nd block
    assert src.get(base.id(k)) is not None
    assert [j for j in blocks if lc._filled[j]] == [blocks[1]]
    assert lazy.get(str(uuid.uuid4())) is None           # a lookup by id: the index
    assert all(lc._filled[j] for j in blocks)
    first = base.id(0)
    assert lazy.get(first).to_dict() == src.get(first).to_dict()
    eager = _load(data, False, monkeypatch)
    later = now + 10_000_000
    assert _drain(lazy, later) == _drain(eager, later)


def test_a_duplicate_uuid_in_a_lazy_snapshot_is_still_refused_at_first_lookup(monkeypatch):
    """The ids are checked for duplicates when the index is built (as before): leaving
    them compressed at load moves no check."""
    src, now, data = _big(n=3000)
    info = F.read_header(data)
    eager = F._decompress(memoryview(data)[F.HEADER:], info, "big.snap")
    lazy = _load(data, True, monkeypatch)
    base = lazy.jobs._base
    content = bytearray(eager)
    a = base.id_at
    content[a + 16:a + 32] = content[a:a + 16]          # rank 1 repeats rank 0's id
    import lz4.frame
    body = lz4.frame.compress(bytes(content), block_size=lz4.frame.BLOCKSIZE_MAX64KB,
                              block_linked=False, content_checksum=True,
                              store_size=True)
    bad = _reframed(data, body)
    s = _load(bad, True, monkeypatch)                     # loads: nothing reads the ids
    with pytest.raises(CorruptionError, match="distinct ids") as e:
        s.get(base.id(5))
    assert e.value.file == "big.snap"
