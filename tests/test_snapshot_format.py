"""Snapshot bytes: round trip, every check of decode_snapshot, bounded decompression."""

import random
import struct

import lz4.frame
import pytest

from aurora_log.local import records as R
from aurora_log.local import snapfile as F
from aurora_log.local import snapshot as S
from aurora_log.errors import CorruptionError
from aurora_log.local.state import State


def _state(n=60):
    st = State()
    lsn = 0
    for i in range(n):
        lsn += 1
        st.apply(lsn, R.ENQUEUE, R.Enqueue(f"j{i}", "t", "q", 1 + i % 4, 3, 1000, 1000 + i,
                                           None if i % 5 else 9_000, None, 30_000,
                                           f"u{i}" if i % 7 == 0 else None,
                                           b'{"i":%d}' % i))
    for i in range(0, n, 3):
        lsn += 1
        st.apply(lsn, R.CLAIM, R.Claim(f"j{i}", 5000, b"%08d" % i, 35_000, "w"))
    for i in range(0, n, 6):
        lsn += 1
        st.apply(lsn, R.COMPLETE, R.Complete(f"j{i}", 6000, b"%08d" % i, b'"ok"'))
    return st


def _snap(st, max_at=6000, version=3):
    if version == 1:
        return S.encode_snapshot(st.export(), st.last_lsn, max_at)
    return S.encode_state(st, st.last_lsn, max_at, version=version)


VERSIONS = pytest.mark.parametrize("version", [1, 2, 3])


@VERSIONS
def test_round_trip_equal_state_and_claim_order(version):
    st = _state()
    data = _snap(st, version=version)
    info, st2 = S.decode_snapshot(data)
    assert info.version == version
    assert info.lsn == st.last_lsn and info.items == len(st.jobs) + 1
    assert info.max_at_ms == 6000 and info.size == len(data)
    assert st2.fingerprint() == st.fingerprint()
    order = []
    for s in (st, st2):
        seq = []
        while (jid := s.pick(10**9)) is not None:
            s.apply(s.last_lsn + 1, R.CLAIM, s.plan_claim(jid, 10**9, b"x" * 8, "w"))
            seq.append(jid)
        order.append(seq)
    assert order[0] == order[1] and len(order[0]) > 10


@VERSIONS
def test_header_layout_documented(version):
    data = _snap(_state(3), version=version)
    assert data[:8] == b"AURSNAP1" and S.HEADER == 64
    ver, flags, lsn, items, blen, clen = struct.unpack_from("<IIQQQQ", data, 8)
    assert (ver, flags) == (version, 0) and blen == len(data) - 64 and items == 4
    assert lz4.frame.get_frame_info(data[64:])["content_size"] == clen


@VERSIONS
def test_truncation_at_every_offset_is_detected(version):
    data = _snap(_state(8), version=version)
    for cut in range(len(data)):
        with pytest.raises(CorruptionError):
            S.decode_snapshot(data[:cut])


@VERSIONS
def test_1000_bit_flips_all_detected(version):
    data = _snap(_state(20), version=version)
    rng = random.Random(4)
    for _ in range(1000):
        b = bytearray(data)
        pos = rng.randrange(len(b))
        b[pos] ^= 1 << rng.randrange(8)
        with pytest.raises(CorruptionError):
            S.decode_snapshot(bytes(b))


def _rehead(body, lsn, items, clen, max_at=0, *, version):
    head = F._HEAD.pack(S.MAGIC, version, 0, lsn, items, len(body), clen, max_at,
                        F._mask(F.crc32c(body)))
    return head + struct.pack("<I", F._mask(F.crc32c(head))) + body


def _xxh32(data: bytes, seed: int = 0) -> int:
    """xxHash32 (for rewriting an lz4 frame descriptor's checksum byte)."""
    P1, P2, P3, P4, P5 = 2654435761, 2246822519, 3266489917, 668265263, 374761393
    M = 0xFFFFFFFF

    def rotl(x, r):
        return ((x << r) | (x >> (32 - r))) & M

    n, i = len(data), 0
    if n >= 16:
        v = [(seed + P1 + P2) & M, (seed + P2) & M, seed & M, (seed - P1) & M]
        while i + 16 <= n:
            for k in range(4):
                lane = struct.unpack_from("<I", data, i + 4 * k)[0]
                v[k] = (rotl((v[k] + lane * P2) & M, 13) * P1) & M
            i += 16
        h = (rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18)) & M
    else:
        h = (seed + P5) & M
    h = (h + n) & M
    while i + 4 <= n:
        h = (rotl((h + struct.unpack_from("<I", data, i)[0] * P3) & M, 17) * P4) & M
        i += 4
    while i < n:
        h = (rotl((h + data[i] * P5) & M, 11) * P1) & M
        i += 1
    h ^= h >> 15
    h = (h * P2) & M
    h ^= h >> 13
    h = (h * P3) & M
    h ^= h >> 16
    return h


def _lying_frame(body: bytes, new_size: int) -> bytes:
    """Rewrite the frame's declared content size (and its descriptor checksum)."""
    flg = body[4]
    assert flg & 0x08  # content size present: magic(4) FLG BD size(8) HC
    desc = bytearray(body[4:14])
    struct.pack_into("<Q", desc, 2, new_size)
    hc = (_xxh32(bytes(desc)) >> 8) & 0xFF
    return body[:4] + bytes(desc) + bytes([hc]) + body[15:]


def test_xxh32_matches_lz4_descriptor_checksum():
    body = _snap(_state(3))[64:]
    assert _lying_frame(body, struct.unpack_from("<Q", body, 6)[0]) == body


@VERSIONS
def test_lying_lz4_content_size_small_is_bounded_and_refused(version):
    st = _state(40)
    good = _snap(st, version=version)
    info = S.read_header(good)
    body = _lying_frame(good[64:], 100)              # claims 100 bytes, holds thousands
    # header agrees, crcs valid
    bad = _rehead(body, info.lsn, info.items, 100, version=info.version)
    with pytest.raises(CorruptionError, match="more than the declared|does not decode"):
        S.decode_snapshot(bad)


@VERSIONS
def test_lying_content_size_huge_is_refused_before_decompressing(version):
    st = _state(5)
    good = _snap(st, version=version)
    info = S.read_header(good)
    huge = 1 << 40
    bad = _rehead(_lying_frame(good[64:], huge), info.lsn, info.items, huge,
                  version=info.version)
    with pytest.raises(CorruptionError, match="over the limit"):
        S.decode_snapshot(bad)
    with pytest.raises(CorruptionError, match="over the limit"):
        S.decode_snapshot(good, max_content=100)


@VERSIONS
def test_header_and_frame_disagree(version):
    good = _snap(_state(5), version=version)
    info = S.read_header(good)
    bad = _rehead(good[64:], info.lsn, info.items, info.content_len + 1,
                  version=info.version)
    with pytest.raises(CorruptionError, match="lz4 frame declares"):
        S.decode_snapshot(bad)


@VERSIONS
def test_item_count_and_lsn_mismatch(version):
    good = _snap(_state(5), version=version)
    info = S.read_header(good)
    with pytest.raises(CorruptionError, match="item"):
        S.decode_snapshot(_rehead(good[64:], info.lsn, info.items + 1, info.content_len,
                                  version=info.version))
    with pytest.raises(CorruptionError, match="LSN"):
        S.decode_snapshot(_rehead(good[64:], info.lsn + 1, info.items, info.content_len,
                                  version=info.version))


def test_malformed_export_is_corruption_not_crash():
    items = [b"AQS\x01" + b'{"v":1,"last_lsn":1,"applied":1,"pairs":[],"jobs":1}', b"Zjunk"]
    with pytest.raises(CorruptionError, match="does not rebuild"):
        S.decode_snapshot(S.encode_snapshot(items, 1))
    with pytest.raises(CorruptionError):
        S.decode_snapshot(S.encode_snapshot([b"not an export"], 1))


@VERSIONS
def test_arbitrary_bytes_never_crash(version):
    rng = random.Random(9)
    good = _snap(_state(5), version=version)
    for _ in range(300):
        n = rng.randrange(0, 200)
        blob = bytes(rng.randrange(256) for _ in range(n))
        for data in (blob, good[:64] + blob, S.MAGIC + blob):
            with pytest.raises(CorruptionError):
                S.decode_snapshot(data)


def test_multi_megabyte_frame_fed_in_pieces():
    rnd = random.Random(1)
    items = [rnd.randbytes(3000) + bytes(3000) for _ in range(900)]  # > 2 MiB compressed
    data = S.encode_snapshot(items, 7)
    info = S.read_header(data)
    assert info.body_len > 2 * F._IN_CHUNK
    content = F._decompress(memoryview(data)[64:], info, "x")
    assert list(F._split(content, info, "x")) == items
    # junk after the frame (crcs recomputed): refused
    bad = _rehead(data[64:] + b"\x00junk", info.lsn, info.items, info.content_len,
                  version=info.version)
    with pytest.raises(CorruptionError, match="after the lz4 frame"):
        F._decompress(memoryview(bad)[64:], S.read_header(bad), "x")
    # a frame cut in its middle piece: refused
    cut = _rehead(data[64:64 + F._IN_CHUNK + 100], info.lsn, info.items, info.content_len,
                  version=info.version)
    with pytest.raises(CorruptionError):
        F._decompress(memoryview(cut)[64:], S.read_header(cut), "x")
