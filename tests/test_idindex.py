"""native/idindex.c's batch lookup (au_idx_find_any_uuid): lines are probed 16 at a time
with their slots prefetched (issue 21: a reopen checks every replayed enqueue against the
snapshot's ids); the answer is still the first line, in order, that names a held id, and a
line that is not a canonical UUID is never a match."""

import random
import uuid

from aurora_log.local._binding import lib
from aurora_log.local.kernels import IdIndex


def _index(n=5000, seed=5):
    rnd = random.Random(seed)
    content = rnd.randbytes(16 * n)
    return content, IdIndex(content, 0, n, 16, 16)


def _first(index: IdIndex, lines: bytes) -> int:
    return lib.au_idx_find_any_uuid(index._ids, index._ctable, index._mask, lines,
                                     len(lines))


def _held(content, k):
    return str(uuid.UUID(bytes=content[16 * k:16 * k + 16]))


def test_the_first_held_line_is_found_at_every_place_in_and_across_groups():
    content, ix = _index()
    rnd = random.Random(9)
    others = [str(uuid.UUID(bytes=rnd.randbytes(16))) for _ in range(70)]
    assert _first(ix, "".join(o + "\n" for o in others).encode()) == -1
    for at in (0, 1, 15, 16, 17, 31, 32, 47, 69):
        for second in (None, at + 1, at + 16):
            lines = list(others)
            lines[at] = _held(content, rnd.randrange(5000))
            if second is not None and second < len(lines):
                lines[second] = _held(content, rnd.randrange(5000))
            text = "".join(x + "\n" for x in lines).encode()
            assert _first(ix, text) == at, (at, second)
            assert _first(ix, text[:-1]) == at                 # no newline after the last
            assert ix.find_any_uuid(text)


def test_lines_that_are_not_canonical_uuids_never_match():
    content, ix = _index()
    held = _held(content, 42)
    bad = [held.upper(), held.replace("-", ""), held + "0", held[:-1], "", "x" * 36,
           held[:8] + "_" + held[9:]]
    text = "".join(b + "\n" for b in bad * 3).encode()
    assert _first(ix, text) == -1
    assert _first(ix, text + held.encode() + b"\n") == len(bad) * 3


def test_the_build_reports_the_first_repeated_id_wherever_it_falls():
    """The build hashes 16 ids ahead (prefetch) but inserts in rank order: the rank it
    reports is the first that repeats an earlier id, within a group or across groups."""
    rnd = random.Random(3)
    n = 100
    for first, again in ((0, 1), (3, 15), (15, 16), (14, 31), (0, 99), (40, 41), (98, 99)):
        ids = bytearray(rnd.randbytes(16 * n))
        ids[16 * again:16 * again + 16] = ids[16 * first:16 * first + 16]
        assert IdIndex(bytes(ids), 0, n, 16, 16).duplicate == again, (first, again)
    ids = rnd.randbytes(16 * n)
    ix = IdIndex(ids, 0, n, 16, 16)
    assert ix.duplicate == -1
    assert all(ix.find_uuid(str(uuid.UUID(bytes=ids[16 * k:16 * k + 16])).encode()) == k
               for k in range(n))
