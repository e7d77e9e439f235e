"""Version 2 snapshots: the lazily loaded state answers exactly like an eager one, every
structural lie in the content is reported (file, offset, reason), version 1 still loads."""

import json
import random
import struct
import uuid

import lz4.frame
import pytest
from hypothesis import given, settings, strategies as st

import aurora_log
from aurora_log import Job
from aurora_log.local import records as R
from aurora_log.local import snapfile as F
from aurora_log.local import snapshot as S
from aurora_log.errors import CorruptionError, InvalidStateError, JobNotFoundError, StaleLeaseError
from aurora_log.job import JobStatus
from aurora_log.local.state import State
from aurora_log.local.table import LazyJobs

T0 = 1_800_000_000_000


def _id(rnd, i, form):
    if form == "uuid":          # canonical UUIDs: stored as 16 raw bytes
        return str(uuid.UUID(int=rnd.getrandbits(128), version=4))
    if form == "fixed" or form is True:
        return f"j{i:05d}"      # fixed width ASCII: "\n"-separated
    return f"j{i}" + "x" * rnd.randrange(3)   # variable: a length table


def _history(seed, n=80, width="uuid", touch=True):
    """A state with pending (ready and scheduled), running, failed, finished and dead jobs,
    several pairs, priorities and unique keys. ``width``: the id form ("uuid", "fixed",
    "var"): each takes another path of the ids section."""
    rnd = random.Random(seed)
    s = State()
    lsn = 0
    now = T0
    held = []

    def write(rec):
        nonlocal lsn
        lsn += 1
        s.apply(lsn, R.encode(rec)[0], rec)

    for i in range(n):
        now += rnd.choice([0, 1, 10, 1000])
        jid = _id(rnd, i, width)
        ukey = rnd.choice([None] * 6 + ["u1", "u2", "ü3"])
        if ukey is not None and s.unique_owner(ukey) is not None:
            ukey = None
        write(R.Enqueue(jid, rnd.choice(["t", "v"]), rnd.choice(["a", "b"]),
                        rnd.randint(1, 4), rnd.randint(0, 2), now, now,
                        rnd.choice([None, None, None, now + 5000, now - 5]),
                        rnd.choice([None, 20_000]), rnd.choice([5000, 30_000]), ukey,
                        b'{"i":%d}' % i))
        if touch and rnd.random() < 0.3:
            j = s.pick(now)
            if j is not None:
                tok = rnd.randbytes(8)
                write(s.plan_claim(j, now, tok, "w"))
                held.append((j, tok))
        if touch and held and rnd.random() < 0.2:
            j, tok = held.pop(rnd.randrange(len(held)))
            write(s.plan_fail(j, tok, now, "boom") if rnd.random() < 0.5
                  else s.plan_complete(j, tok, now, b'"ok"'))
    return s, now


def _pair(seed, width="uuid", touch=True, n=80):
    src, now = _history(seed, n, width, touch)
    data = S.encode_state(src, src.last_lsn, now)
    info, lazy = S.decode_snapshot(data, "x.snap")
    eager = State.from_export(list(src.export()))
    assert info.version == S.VERSION and type(lazy.jobs) is LazyJobs
    return eager, lazy, now, data


def _lazy(s):
    return type(s.jobs) is LazyJobs and s.jobs._d is None


def _ids(s):
    return list(State.from_export(list(s.export())).jobs)


OPS = st.lists(st.tuples(st.sampled_from(
    ["claim", "claim_a", "finish", "cancel", "get", "history", "stats", "next_due", "reap",
     "enqueue", "enqueue_dup", "retry_dead", "contains", "heartbeat", "purge", "list"]),
    st.integers(0, 10**6), st.sampled_from([0, 1, 1000, 6000])), max_size=40)


def _both(fn, eager, lazy):
    res = []
    for s in (eager, lazy):
        try:
            res.append(("ok", fn(s)))
        except (InvalidStateError, JobNotFoundError, StaleLeaseError, ValueError, KeyError) as e:
            res.append(("err", type(e)))
    assert res[0] == res[1]
    return res[0]


def _job(j):
    return None if j is None else j.to_dict()


@settings(max_examples=120, deadline=None)
@given(seed=st.integers(0, 10**6), width=st.sampled_from(["uuid", "fixed", "var"]), ops=OPS)
def test_lazy_state_answers_like_the_eager_one(seed, width, ops):
    eager, lazy, now, _ = _pair(seed, width)
    ids = _ids(eager)
    held = []
    lsn = eager.last_lsn
    extra = 0

    def write(rec):
        nonlocal lsn
        lsn += 1
        rtype = R.encode(rec)[0]
        for s in (eager, lazy):
            s.apply(lsn, rtype, rec)

    for op, x, dt in ops:
        now += dt
        jid = ids[x % len(ids)] if ids else "none"
        if op in ("claim", "claim_a"):
            qs = frozenset(["a"]) if op == "claim_a" else None
            j = _both(lambda s: s.pick(now, qs), eager, lazy)[1]  # noqa: B023 - called at once
            if j is not None:
                tok = struct.pack("<Q", x)
                write(eager.plan_claim(j, now, tok, "w"))
                held.append((j, tok))
                assert _both(lambda s: _job(s.get(j)), eager, lazy)  # noqa: B023 - called at once
        elif op == "finish" and held:
            j, tok = held.pop(x % len(held))
            r = _both(lambda s: s.plan_fail(j, tok, now, "e") if x % 2  # noqa: B023 - called at once
                      else s.plan_complete(j, tok, now, b"1"), eager, lazy)  # noqa: B023 - called at once
            if r[0] == "ok":
                write(r[1])
        elif op == "heartbeat" and held:
            j, tok = held[x % len(held)]
            r = _both(lambda s: s.plan_heartbeat(j, tok, now), eager, lazy)  # noqa: B023 - called at once
            if r[0] == "ok":
                write(r[1])
        elif op == "cancel":
            r = _both(lambda s: s.plan_cancel(jid, now), eager, lazy)  # noqa: B023 - called at once
            if r[0] == "ok" and r[1] is not None:
                write(r[1])
        elif op == "retry_dead":
            r = _both(lambda s: s.plan_retry_dead(jid, now), eager, lazy)  # noqa: B023 - called at once
            if r[0] == "ok":
                write(r[1])
        elif op == "get":
            _both(lambda s: _job(s.get(jid)), eager, lazy)  # noqa: B023 - called at once
            _both(lambda s: s.status_of(jid), eager, lazy)  # noqa: B023 - called at once
        elif op == "history":
            _both(lambda s: s.history(jid), eager, lazy)  # noqa: B023 - called at once
        elif op == "stats":
            _both(lambda s: (s.stats(), len(s), s.running_ids()), eager, lazy)
        elif op == "next_due":
            _both(lambda s: s.next_due_ms(), eager, lazy)
        elif op == "reap":
            recs = _both(lambda s: s.plan_reap(now), eager, lazy)[1]  # noqa: B023 - called at once
            for rec in recs:
                write(rec)
        elif op == "contains":
            probe = [jid, f"j{x:05d}", jid.upper(), str(uuid.UUID(int=x)), None][x % 5]
            _both(lambda s: (probe in s, probe in s.jobs, s.jobs.get(probe) is None), eager, lazy)  # noqa: B023 - called at once
        elif op in ("enqueue", "enqueue_dup"):
            new = jid if op == "enqueue_dup" else f"n{extra:05d}"
            extra += 1
            if _both(lambda s: new in s.jobs, eager, lazy)[1]:  # noqa: B023 - called at once
                continue
            write(R.Enqueue(new, "t", "a", 1 + x % 4, 1, now, now, None, None, 30_000, None,
                            b"{}"))
            ids.append(new)
        elif op == "purge":
            r = _both(lambda s: s.plan_purge(now + 1, now), eager, lazy)  # noqa: B023 - called at once
            if r[1] is not None:
                write(r[1])
        elif op == "list":
            st_ = [None, JobStatus.PENDING, JobStatus.RUNNING][x % 3]
            _both(lambda s: [j.to_dict() for j in s.list(status=st_, limit=7)], eager, lazy)  # noqa: B023 - called at once
    assert lazy.fingerprint() == eager.fingerprint()
    assert lazy._unique == eager._unique
    later = now + 10**8
    order = []
    for s in (eager, lazy):
        seq = []
        while (j := s.pick(later)) is not None:
            s.apply(s.last_lsn + 1, R.CLAIM, s.plan_claim(j, later, b"z" * 8, "w"))
            seq.append(j)
        order.append(seq)
    assert order[0] == order[1]
    assert lazy.anomalies == eager.anomalies


def test_claims_completes_and_stats_do_not_materialise():
    eager, lazy, now, _ = _pair(3, n=300)
    for k in range(40):
        j = lazy.pick(now + 10**7)
        assert j == eager.pick(now + 10**7)
        tok = b"%08d" % k
        for s in (eager, lazy):
            s.apply(s.last_lsn + 1, R.CLAIM, s.plan_claim(j, now, tok, "w"))
            assert s.get(j).status == JobStatus.RUNNING
            s.apply(s.last_lsn + 1, R.COMPLETE, s.plan_complete(j, tok, now, b"1"))
        assert lazy.stats() == eager.stats() and lazy.next_due_ms() == eager.next_due_ms()
        assert lazy.history(j) == eager.history(j)
    assert _lazy(lazy)
    # an unknown id is found by a scan, an absent one answered without materialising
    some = _ids(eager)[-1]
    assert lazy.get(some).to_dict() == eager.get(some).to_dict()
    assert "nope00" not in lazy.jobs and lazy.get("nope00") is None
    assert some.upper() not in lazy.jobs and str(uuid.UUID(int=5)) not in lazy.jobs
    assert _lazy(lazy)
    # adding a job keeps it lazy too; iterating materialises, in the eager order
    for s in (eager, lazy):
        s.apply(s.last_lsn + 1, R.ENQUEUE, R.Enqueue("new01", "t", "a", 2, 1, now, now, None,
                                                     None, 30_000, None, b"{}"))
    assert _lazy(lazy) and len(lazy) == len(eager)
    assert list(lazy.jobs) == list(eager.jobs)
    assert type(lazy.jobs) is dict and lazy.fingerprint() == eager.fingerprint()


@pytest.mark.parametrize("form", ["uuid", "fixed", "var"])
def test_many_unknown_ids_build_the_index_once(form):
    eager, lazy, now, _ = _pair(5, form, n=200, touch=False)
    ids = _ids(eager)
    for j in ids[::-1]:
        assert (j in lazy.jobs) and lazy.get(j).to_dict() == eager.get(j).to_dict()
    base = lazy.jobs._base
    assert base.uuid == (form == "uuid")
    assert (base.id_width == 0) == (form == "var")
    # fixed-width ids: the C hash index over the ids section, no dict of id strings
    assert _lazy(lazy) and (lazy.jobs._index is None) == base.indexed
    assert (base._index is not None) == base.indexed == (form != "var")


def test_the_id_index_tells_ids_sharing_a_prefix_apart():
    """UUIDv7-style ids share their leading timestamp bytes: the index hashes every byte,
    so each is found at its own rank and near-misses are not found."""
    from aurora_log.local.table import SnapshotBase
    n = 5000
    raws = [b"\xab" * 8 + k.to_bytes(8, "big") for k in range(n)]
    content = b"".join(raws)
    base = SnapshotBase(n, content, 0, 36, None, [b"\x00"] * 52, [0] * (n + 1), "t.snap",
                        uuid=True)
    for k in (0, 1, 2, n // 2, n - 1):
        assert base.find(str(uuid.UUID(bytes=raws[k]))) == k
    assert base.find(str(uuid.UUID(bytes=b"\xab" * 8 + n.to_bytes(8, "big")))) is None
    assert base.find(str(uuid.UUID(bytes=raws[3])).upper()) is None     # not canonical
    assert base.find(str(uuid.UUID(bytes=raws[3])).replace("-", "_")) is None
    assert base.find(str(uuid.UUID(bytes=raws[3]))[:-1] + "\u00e9") is None
    assert base.find(5) is None                                          # type: ignore


@pytest.mark.parametrize("form", ["uuid", "fixed"])
def test_duplicate_ids_are_reported_by_the_first_lookup(form):
    src, info, meta, secs = _good(form)
    ids = bytearray(secs["ids"])
    w = 16 if form == "uuid" else meta["id_width"] + 1
    ids[w:2 * w] = ids[0:w]                        # job 1 gets job 0's id
    _, s = S.decode_snapshot(_reframe(info, _build(meta, _with(secs, ids=ids))), "f.snap")
    with pytest.raises(CorruptionError, match="distinct ids") as e:
        s.get("no-such-job")
    assert e.value.file == "f.snap"


def test_an_old_reference_to_the_lazy_table_keeps_working():
    eager, lazy, now, _ = _pair(7)
    ref = lazy.jobs
    lazy.materialize()
    assert type(lazy.jobs) is dict and ref._d is lazy.jobs
    assert dict(ref.items()) == lazy.jobs and len(ref) == len(eager.jobs)
    # any other dict method goes to the materialised dict as well
    _, lazy2, _, _ = _pair(7)
    assert lazy2.jobs.setdefault("zz-new", b"x") == b"x" and type(lazy2.jobs) is dict
    assert "zz-new" in lazy2.jobs and list(lazy2.jobs)[-1] == "zz-new"


def test_version_2_is_smaller_than_version_1_for_pending_jobs():
    src, now = _history(1, n=2000, touch=False)
    v1 = S.encode_snapshot(src.export(), src.last_lsn, now)
    v2 = S.encode_state(src, src.last_lsn, now)
    assert len(v2) < len(v1)


# --------------------------------------------------------------------------- corruption

def _content(data):
    info = S.read_header(data)
    return info, F._decompress(memoryview(data)[64:], info, "x")


def _parse(content):
    (mlen,) = struct.unpack_from("<I", content)
    meta = json.loads(content[4:4 + mlen])
    pos = 4 + mlen
    secs = {}
    for name in F.SECTIONS:
        (ln,) = struct.unpack_from("<Q", content, pos)
        secs[name] = bytearray(content[pos + 8:pos + 8 + ln])
        pos += 8 + ln
    return meta, secs


def _build(meta, secs, tail=b""):
    m = json.dumps(meta).encode()
    out = struct.pack("<I", len(m)) + m
    for name in F.SECTIONS:
        out += struct.pack("<Q", len(secs[name])) + bytes(secs[name])
    return out + tail


def _reframe(info, content):
    body = lz4.frame.compress(content, content_checksum=True, store_size=True)
    return F._frame(info.version, info.lsn, info.items, body, len(content), info.max_at_ms)


def _runs(raw, npairs):
    p, out = 0, []
    for _ in range(npairs + 1):
        (m,) = struct.unpack_from("<I", raw, p)
        p += 4
        out.append([struct.unpack_from("<II", raw, p + 8 * i) for i in range(m)])
        p += 8 * m
    return out


def _pack_runs(runs):
    out = b""
    for segs in runs:
        out += struct.pack("<I", len(segs)) + b"".join(struct.pack("<II", *s) for s in segs)
    return bytearray(out)


def _good(form="fixed"):
    src, now = _history(11, n=60, width=form, touch=True)
    data = S.encode_state(src, src.last_lsn, now)
    info, content = _content(data)
    meta, secs = _parse(content)
    return src, info, meta, secs


def _refused(info, content, match):
    with pytest.raises(CorruptionError, match=match) as e:
        S.decode_snapshot(_reframe(info, content), "f.snap")
    assert e.value.file == "f.snap" and e.value.offset is not None and e.value.reason


def test_reframed_good_content_loads():
    src, info, meta, secs = _good()
    _, s = S.decode_snapshot(_reframe(info, _build(meta, secs)), "f.snap")
    assert s.fingerprint() == State.from_export(list(src.export())).fingerprint()


def _with(secs, **kw):
    out = dict(secs)
    out.update(kw)
    return out


def test_runs_missing_or_repeating_a_job_are_refused():
    src, info, meta, secs = _good()
    runs = _runs(secs["runs"], len(meta["pairs"]))
    segs = [(r, s) for r, segs in enumerate(runs) for s in segs]
    r, (a, c) = next((r, s) for r, s in segs if s[1] > 1)
    shorter = [list(x) for x in runs]
    shorter[r][shorter[r].index((a, c))] = (a, c - 1)
    _refused(info, _build(meta, _with(secs, runs=_pack_runs(shorter))), "exactly once")
    twice = [list(x) for x in runs]
    twice[r].append((a, 1))
    _refused(info, _build(meta, _with(secs, runs=_pack_runs(twice))), "exactly once")
    _refused(info, _build(meta, _with(secs, runs=secs["runs"] + b"\0")), "after the last run")


def test_bad_heads_are_refused():
    src, info, meta, secs = _good()
    nb, w = meta["base"], F.HEAD_SIZE
    heads = secs["heads"]
    kinds = heads[:w]

    def plane_at(j):      # offset of a stored plane j
        stored = [k for k in range(w) if kinds[k] == 0]
        return 2 * w + stored.index(j) * nb

    for j, value, match in ((48, 7, "priority"), (49, 2, "flags"), (44, 9, "pair index")):
        h = bytearray(heads)
        if kinds[j]:
            h[w + j] = value                      # a constant plane
        else:
            h[plane_at(j)] = value
        _refused(info, _build(meta, _with(secs, heads=h)), match)
    h = bytearray(heads)
    h[0] = 5
    _refused(info, _build(meta, _with(secs, heads=h)), "plane kind")
    _refused(info, _build(meta, _with(secs, heads=heads + b"\0")), "planes need")


def test_bad_sections_and_meta_are_refused():
    src, info, meta, secs = _good()
    content = _build(meta, secs)
    _refused(info, content + b"\0", "after the last section")
    _refused(info, content[:-1], "overruns|missing")
    _refused(info, _build(dict(meta, base=meta["base"] + 1, jobs=meta["jobs"] + 1), secs),
             "item count|expected")
    _refused(info, _build(dict(meta, v=info.version + 1), secs), "bad meta")
    _refused(info, _build({k: v for k, v in meta.items() if k != "control"}, secs),
             "bad meta")
    _refused(info, b"\xff\xff\xff\x7f" + content[4:], "meta")
    ids = bytearray(secs["ids"])
    ids[meta["id_width"]] = ord("x")                 # the first id's newline
    _refused(info, _build(meta, _with(secs, ids=ids)), "newline")
    tails = secs["tails"] + b"x"
    _refused(info, _build(meta, _with(secs, tails=tails)), "tail lengths")
    if meta["rest"] >= 2:
        rp = bytearray(secs["rest_pos"])
        rp[0:4], rp[-4:] = rp[-4:], rp[0:4]
        if bytes(rp) != bytes(secs["rest_pos"]):
            _refused(info, _build(meta, _with(secs, rest_pos=rp)), "rest positions")
    rest = bytearray(secs["rest"])
    rest[0:1] = b"Z"
    _refused(info, _build(meta, _with(secs, rest=rest)), "does not rebuild")


def test_duplicate_ids_are_reported_when_found():
    src, info, meta, secs = _good()
    w = meta["id_width"]
    ids = bytearray(secs["ids"])
    ids[w + 1:2 * w + 1] = ids[0:w]                # job 1 gets job 0's id
    _, s = S.decode_snapshot(_reframe(info, _build(meta, _with(secs, ids=ids))), "f.snap")
    with pytest.raises(CorruptionError, match="distinct ids") as e:
        s.materialize()
    assert e.value.file == "f.snap"


def test_a_run_out_of_key_order_is_repaired_and_noted():
    """A writer bug (the checksums pass): the run is trusted only as far as each entry's
    own blob agrees; from the first entry that does not, the rest goes into the heaps.
    Nothing is lost or handed out twice; what was handed out before the disorder was
    reached came in the run's order (the documented limit of the check)."""
    s0 = State()
    for i in range(20):
        s0.apply(i + 1, R.ENQUEUE, R.Enqueue(f"k{i:03d}", "t", "q", 2, 1, T0 + i, T0 + i, None,
                                             None, 30_000, None, b"{}"))
    data = S.encode_state(s0, s0.last_lsn, T0)
    info, content = _content(data)
    meta, secs = _parse(content)
    runs = _runs(secs["runs"], 1)
    assert runs[0] == [(0, 20)]
    bad = [[(5, 15), (0, 5)], []]
    _, s = S.decode_snapshot(_reframe(info, _build(meta, _with(secs, runs=_pack_runs(bad)))))
    seq = []
    while (j := s.pick(T0 + 100)) is not None:
        s.apply(s.last_lsn + 1, R.CLAIM, s.plan_claim(j, T0 + 100, b"x" * 8, "w"))
        seq.append(j)
    assert sorted(seq) == [f"k{i:03d}" for i in range(20)]       # each once, none lost
    assert seq == [f"k{i:03d}" for i in list(range(5, 20)) + list(range(5))]
    assert any("not in key order" in why for _, why in s.anomalies)
    # a run handed the wrong pair's jobs: every job still claimable from its own pair
    s1 = State()
    for i in range(10):
        s1.apply(i + 1, R.ENQUEUE, R.Enqueue(f"m{i:03d}", "t", "ab"[i % 2], 2, 1, T0, T0, None,
                                             None, 30_000, None, b"{}"))
    data = S.encode_state(s1, s1.last_lsn, T0)
    info, content = _content(data)
    meta, secs = _parse(content)
    runs = _runs(secs["runs"], 2)
    swapped = [runs[1], runs[0], runs[2]]
    _, s = S.decode_snapshot(_reframe(info, _build(meta, _with(secs, runs=_pack_runs(swapped)))))
    got = []
    while (j := s.pick(T0 + 1, frozenset(["a"]))) is not None:
        s.apply(s.last_lsn + 1, R.CLAIM, s.plan_claim(j, T0 + 1, b"x" * 8, "w"))
        got.append(j)
    assert got == [f"m{i:03d}" for i in range(0, 10, 2)]


def test_version_1_files_still_load_the_same_state():
    src, now = _history(2, n=120)
    v1 = S.encode_snapshot(src.export(), src.last_lsn, now)
    info, s = S.decode_snapshot(v1)
    assert info.version == 1 and type(s.jobs) is dict
    assert s.fingerprint() == State.from_export(list(src.export())).fingerprint()


# --------------------------------------------------------------------------- queue level

def test_queue_reopens_lazily_and_matches_a_full_replay(tmp_path):
    d = tmp_path / "q"
    q = aurora_log.open(d, durability="os", auto_compact=False, reaper_interval=None,
                        exclusive=True)   # fingerprints with the last LSN across reopens
    ids = q.enqueue_many([Job("email", {"i": i}, priority=1 + i % 4) for i in range(500)])
    j = q.claim("w")
    q.complete(j.id, j.token)
    q.compact()
    q.enqueue(Job("email", {"i": -1}))
    q.compact()                       # two snapshots: the WAL before the older one retires
    q.close()
    q = aurora_log.open(d, durability="os", auto_compact=False, reaper_interval=None,
                        exclusive=True)   # fingerprints with the last LSN across reopens
    assert type(q._state.jobs) is LazyJobs
    claimed = [q.claim("w") for _ in range(5)]
    for c in claimed:
        q.complete(c.id, c.token)
    assert q.stats()["completed"] == 6 and q.get(claimed[0].id).status == JobStatus.COMPLETED
    assert _lazy(q._state)
    assert q.get(ids[-1]).payload == {"i": 499}          # found by a scan
    q.enqueue(Job("email", {"i": -2}))                    # an absent id: still lazy
    assert _lazy(q._state)
    res = q.compact()                                     # materialises (built outside the lock)
    assert res.jobs == 502 and type(q._state.jobs) is dict
    fp = q._state.fingerprint()
    q.close()
    q = aurora_log.open(d, durability="os", auto_compact=False, reaper_interval=None,
                        exclusive=True)   # fingerprints with the last LSN across reopens
    assert q._state.fingerprint() == fp
    q.close()


def test_a_version_1_snapshot_in_a_store_still_opens(tmp_path):
    d = tmp_path / "q"
    q = aurora_log.open(d, durability="os", auto_compact=False, reaper_interval=None,
                        exclusive=True)   # fingerprints with the last LSN across reopens
    q.enqueue_many([Job("email", {"i": i}) for i in range(50)])
    q.compact()
    q.enqueue(Job("email", {"i": 50}))
    res = q.compact()
    fp = q._state.fingerprint()
    q.close()
    info, st_ = S.load_snapshot(res.path)
    from aurora_log.local.log import write_file_durably
    write_file_durably(res.path, S.encode_snapshot(st_.export(), info.lsn, info.max_at_ms))
    q = aurora_log.open(d, durability="os", auto_compact=False, reaper_interval=None,
                        exclusive=True)   # fingerprints with the last LSN across reopens
    assert q.snapshot_report.lsn == info.lsn and not q.snapshot_report.problems
    assert type(q._state.jobs) is dict and q._state.fingerprint() == fp
    q.close()


def test_prebuild_then_changes_then_materialise_equals_eager():
    eager, lazy, now, _ = _pair(13, n=150)
    lazy.jobs.prebuild()                       # as the compactor does, outside the lock
    for k in range(10):
        j = lazy.pick(now)
        if j is None:
            break
        assert j == eager.pick(now)
        for s in (eager, lazy):
            s.apply(s.last_lsn + 1, R.CLAIM, s.plan_claim(j, now, b"%08d" % k, "w"))
    for s in (eager, lazy):
        s.apply(s.last_lsn + 1, R.ENQUEUE, R.Enqueue("zz", "t", "a", 2, 1, now, now, None,
                                                     None, 30_000, None, b"{}"))
    assert _lazy(lazy)
    assert list(lazy.jobs.copy()) == list(eager.jobs)
    assert lazy.fingerprint() == eager.fingerprint()


def test_uuid_ids_section_checks_and_duplicates():
    src, info, meta, secs = _good("uuid")
    assert meta["uuid"] is True and len(secs["ids"]) == 16 * meta["base"]
    _refused(info, _build(meta, _with(secs, ids=secs["ids"] + b"\0")), "x 16")
    _refused(info, _build(dict(meta, id_width=35), secs), "id form")
    _refused(info, _build(dict(meta, uuid=1), secs), "id form")
    ids = bytearray(secs["ids"])
    ids[16:32] = ids[0:16]                         # job 1 gets job 0's id
    _, s = S.decode_snapshot(_reframe(info, _build(meta, _with(secs, ids=ids))), "f.snap")
    with pytest.raises(CorruptionError, match="distinct ids") as e:
        s.materialize()
    assert e.value.file == "f.snap"
    # an id found at an offset that is not a multiple of 16 is not an id
    _, s = S.decode_snapshot(_reframe(info, _build(meta, secs)), "f.snap")
    raw = bytes(secs["ids"][8:24])
    fake = str(uuid.UUID(bytes=raw))
    assert s.jobs._base.find(fake) is None or s.jobs._base.id(s.jobs._base.find(fake)) == fake


@pytest.mark.parametrize("form", ["uuid", "fixed", "var", "mixed"])
def test_encoding_in_small_pieces_gives_the_same_file(monkeypatch, form):
    """encode_state works in pieces of _STEP jobs: every piece boundary must vanish."""
    src, now = _history(17, n=90, width="var" if form == "mixed" else form)
    if form == "mixed":    # ASCII ids whose lengths only add up to a fixed width
        src = State.from_export(list(src.export()))
        for jid in ("a" * 35, "b" * 37):
            src.apply(src.last_lsn + 1, R.ENQUEUE, R.Enqueue(jid, "t", "a", 2, 1, now, now, None,
                                                             None, 30_000, None, b"{}"))
    whole = S.encode_state(src, src.last_lsn, now)
    monkeypatch.setattr(F, "_STEP", 7)
    pieces = S.encode_state(src, src.last_lsn, now)
    assert F._decompress(memoryview(pieces)[64:], S.read_header(pieces), "x") == \
        F._decompress(memoryview(whole)[64:], S.read_header(whole), "x")
    _, s = S.decode_snapshot(pieces)
    assert s.fingerprint() == State.from_export(list(src.export())).fingerprint()
    meta, _ = _parse(F._decompress(memoryview(pieces)[64:], S.read_header(pieces), "x"))
    assert meta["uuid"] == (form == "uuid")
    assert (meta["id_width"] == 0) == (form in ("var", "mixed"))
