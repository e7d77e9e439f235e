"""crc32c of the C core against the `crc32c` package as the oracle, both code paths."""

import random

import crc32c as oracle
import pytest
from hypothesis import given, settings, strategies as st

from aurora_log.local._binding import ffi, lib
from aurora_log.local.log import crc32c

PATHS = {"sw": lib.au_crc32c_sw, "hw": lib.au_crc32c_hw, "auto": lib.au_crc32c}


def run(fn, data: bytes, value: int = 0) -> int:
    buf = ffi.from_buffer(data)
    return fn(value, buf, len(data))


@pytest.mark.parametrize("path", sorted(PATHS))
def test_check_vector(path):
    assert run(PATHS[path], b"123456789") == 0xE3069283
    assert run(PATHS[path], b"") == 0


def test_public_function_and_hw_detected():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"6789", crc32c(b"12345")) == 0xE3069283
    # every x86-64 and ARMv8 server this runs on has the instructions; if not, hw == sw
    print("hardware crc32c:", bool(lib.au_crc32c_hw_available()))


@pytest.mark.parametrize("path", sorted(PATHS))
def test_random_lengths_and_alignments(path):
    rng = random.Random(1234)
    block = rng.randbytes(70_000)
    fn = PATHS[path]
    for _ in range(1500):
        start = rng.randrange(0, 64)
        n = rng.choice([rng.randrange(0, 40), rng.randrange(0, 600), rng.randrange(0, 66_000)])
        data = block[start:start + n]
        seed = rng.choice([0, rng.getrandbits(32)])
        buf = bytearray(block[start:start + n])  # fresh buffer: its own alignment
        assert fn(seed, ffi.from_buffer(buf), len(buf)) == oracle.crc32c(data, seed)
        # misaligned view into a larger buffer
        big = ffi.from_buffer(block)
        assert fn(seed, big + start, n) == oracle.crc32c(data, seed)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 2**32 - 1))
def test_matches_oracle_hypothesis(data, value):
    expect = oracle.crc32c(data, value)
    for fn in PATHS.values():
        assert run(fn, data, value) == expect


def test_mask_roundtrip_and_leveldb_formula():
    rng = random.Random(5)
    for _ in range(1000):
        c = rng.getrandbits(32)
        m = lib.au_crc_mask(c)
        assert m == ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF
        assert lib.au_crc_unmask(m) == c
