"""The C scanner under AddressSanitizer + UndefinedBehaviorSanitizer, fuzzed over mutated
valid stores (RELIABILITY.md "decoder / arbitrary bytes", issue 6 item 7).

tests/fuzz/build.sh compiles native/format.c + crc32c.c + sys.c with
-fsanitize=address,undefined (test-only; the installed module is untouched) into a harness
(tests/fuzz/scan_fuzz.c) that runs each input the way log.py does: header check, the
scanner in several chunk sizes, the zero-tail and durable-evidence searches, crc32c hw vs
table. The inputs are real segments written by the Log (sealed, unsealed, several rolls)
mutated by a deterministic mutator that also re-signs what it breaks (batch-header and
record crcs recomputed) so lies about lengths, counts, LSNs and flags reach the deep paths.

Any sanitizer report or invariant abort fails the test, and the smallest failing input is
saved under tests/fuzz/regressions/ (which test_fuzz_regressions replays forever after).
With clang + libFuzzer available, a coverage-guided run is added.

Skips (with the reason) when no compiler with a sanitizer runtime is present. CI needs:
    apt-get install -y clang          (gcc alone also works: libasan/libubsan come with it)

Reproduce:  pytest tests/test_fuzz_native.py -q -s
Longer:     python bench/soak.py fuzz --inputs 2000000 [--libfuzzer-seconds 600]
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

import aurora_log
from aurora_log.local.log import Log, crc32c

HERE = Path(__file__).resolve().parent
FUZZ = HERE / "fuzz"
REGRESSIONS = FUZZ / "regressions"
SEG_HDR = 32
BATCH_HDR = 32
REC_HDR = 17

_build_cache: dict = {}


def mask(c: int) -> int:
    return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def build(out: Path) -> dict:
    """{'scan_fuzz': path, 'scan_libfuzzer': path|None} or {'skip': reason}."""
    key = str(out)
    if key in _build_cache:
        return _build_cache[key]
    r = subprocess.run(["bash", str(FUZZ / "build.sh"), str(out)], capture_output=True,
                       text=True)
    if r.returncode == 77:
        res = {"skip": r.stdout.strip() or r.stderr.strip()}
    elif r.returncode != 0:
        raise AssertionError(f"sanitizer build failed:\n{r.stdout}\n{r.stderr}")
    else:
        lf = out / "scan_libfuzzer"
        res = {"scan_fuzz": out / "scan_fuzz", "scan_libfuzzer": lf if lf.exists() else None,
               "log": r.stdout}
    _build_cache[key] = res
    return res


# ------------------------------------------------------------------------------ corpus

def corpus(tmp: Path) -> list[bytes]:
    """Segments the real Log wrote: sealed by rolls and close, an open tail, a cut tail."""
    out = []
    rng = random.Random(7)
    for k, seg in enumerate((4096, 8192)):
        d = tmp / f"c{k}"
        log = Log.open(d, segment_bytes=seg)
        for i in range(60):
            n = rng.choice((0, 1, 7, 8, 9, 100, 600))
            if i % 5 == 0:
                log.commit([(rng.randrange(1, 256), rng.randbytes(n)) for _ in range(3)])
            else:
                log.commit([(rng.randrange(1, 256), rng.randbytes(n))])
        # the newest segment while still open (no seal), then everything after close
        out.append((d / "wal" / sorted(os.listdir(d / "wal"))[-1]).read_bytes())
        log.close()
        out += [p.read_bytes() for p in sorted((d / "wal").glob("*.seg"))]
    q = aurora_log.open(tmp / "q", segment_bytes=4096, reaper_interval=None)
    for i in range(20):
        q.enqueue(aurora_log.Job("f", {"i": i, "s": "x" * (i * 13)}, id=f"f{i}"))
        j = q.claim("w")
        q.complete(j.id, j.token, {"r": i})
    q.close()
    out += [p.read_bytes() for p in sorted((tmp / "q" / "wal").glob("*.seg"))]
    return [b for b in out if len(b) > SEG_HDR]


def _batches(buf: bytes) -> list[int]:
    """Offsets of the valid-looking batch headers of a segment (walking batch_len)."""
    out, pos = [], SEG_HDR
    while pos + BATCH_HDR <= len(buf):
        ln = struct.unpack_from("<I", buf, pos)[0]
        if ln < BATCH_HDR or ln & 7 or pos + ln > len(buf):
            break
        out.append(pos)
        pos += ln
    return out


def _resign_batch(b: bytearray, pos: int) -> None:
    if pos + BATCH_HDR <= len(b):
        c = crc32c(bytes(b[pos + 8:pos + 32]), crc32c(bytes(b[pos:pos + 4])))
        struct.pack_into("<I", b, pos + 4, mask(c))


def _resign_records(b: bytearray, pos: int) -> None:
    """Recompute the crc of every frame in the batch at pos (as far as lengths allow)."""
    if pos + BATCH_HDR > len(b):
        return
    end = min(len(b), pos + struct.unpack_from("<I", b, pos)[0])
    n = struct.unpack_from("<I", b, pos + 16)[0]
    p = pos + BATCH_HDR
    for _ in range(min(n, 10000)):
        if p + REC_HDR > end:
            return
        ln = struct.unpack_from("<I", b, p)[0]
        if p + REC_HDR + ln > end:
            return
        body = bytes(b[p + 16:p + 17]) + bytes(b[p + 8:p + 16]) + bytes(b[p + 17:p + 17 + ln])
        struct.pack_into("<I", b, p + 4, mask(crc32c(body)))
        p += REC_HDR + ln


INTERESTING32 = (0, 1, 7, 8, 16, 17, 31, 32, 33, 40, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000,
                 0x7FFFFFFF, 0x80000000, 0xFFFFFFF8, 0xFFFFFFFF, 256 << 20, (256 << 20) + 8)


def mutate(rng: random.Random, src: bytes, pool: list[bytes]) -> bytes:
    b = bytearray(src)
    bats = _batches(src) or [SEG_HDR]
    for _ in range(rng.randint(1, 3)):
        m = rng.randrange(12)
        if not b:
            b = bytearray(rng.randbytes(rng.randrange(1, 64)))
        if m == 0:                                   # bit flips
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(len(b))
                b[i] ^= 1 << rng.randrange(8)
        elif m == 1:                                 # random bytes
            for _ in range(rng.randint(1, 16)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        elif m in (2, 3, 4):                         # lie in a batch header field, re-signed
            pos = rng.choice(bats)
            field = rng.choice((0, 8, 12, 16, 20, 24, 28))
            if pos + field + 8 <= len(b):
                if field in (8, 24):
                    cur = struct.unpack_from("<Q", b, pos + field)[0]
                    v = rng.choice((0, 1, cur - 1, cur + 1, cur + 8, len(b), 1 << 63,
                                    (1 << 64) - 1, pos, pos + 8)) & ((1 << 64) - 1)
                    struct.pack_into("<Q", b, pos + field, v)
                else:
                    cur = struct.unpack_from("<I", b, pos + field)[0]
                    v = rng.choice(INTERESTING32 + ((cur + rng.choice((-8, -1, 1, 8))) &
                                                    0xFFFFFFFF,))
                    struct.pack_into("<I", b, pos + field, v)
                _resign_batch(b, pos)
                if m == 4:
                    _resign_records(b, pos)
        elif m == 5:                                 # lie in a record frame, re-signed
            pos = rng.choice(bats)
            p = pos + BATCH_HDR
            if p + REC_HDR <= len(b):
                f = rng.choice((0, 8, 16))
                if f == 0:
                    struct.pack_into("<I", b, p, rng.choice(INTERESTING32))
                elif f == 8:
                    struct.pack_into("<Q", b, p + 8, rng.randrange(1 << 64))
                else:
                    b[p + 16] = rng.choice((0, 1, 255))
                _resign_records(b, pos)
                _resign_batch(b, pos)
        elif m == 6:                                 # truncate
            del b[rng.randrange(len(b) + 1):]
        elif m == 7:                                 # append zeros / garbage
            n = rng.choice((1, 7, 8, 31, 32, 33, 511, 4096))
            b += bytes(n) if rng.random() < 0.5 else rng.randbytes(n)
        elif m == 8:                                 # stale copy from another store
            other = rng.choice(pool)
            if len(other) > SEG_HDR + 8:
                a = rng.randrange(SEG_HDR, len(other)) & ~7
                n = rng.randrange(8, 600)
                dst = rng.randrange(SEG_HDR, max(SEG_HDR + 1, len(b))) & ~7
                b[dst:dst + n] = other[a:a + n]
        elif m == 9:                                 # duplicate a batch elsewhere
            pos = rng.choice(bats)
            ln = struct.unpack_from("<I", b, pos)[0] if pos + 4 <= len(b) else 0
            chunk = bytes(b[pos:pos + min(ln, 8192)])
            dst = rng.randrange(SEG_HDR, max(SEG_HDR + 1, len(b))) & ~7
            b[dst:dst + len(chunk)] = chunk
        elif m == 10:                                # zero a range (a hole)
            a = rng.randrange(len(b))
            b[a:a + rng.randrange(1, 512)] = bytes(min(len(b) - a, 512))[:len(b[a:a + 512])]
        else:                                        # small random file / header only
            b = bytearray(b[:rng.choice((0, 4, 31, 32, 33, 40, 64))]) + rng.randbytes(
                rng.randrange(0, 200))
    return bytes(b)


def gen_inputs(seed: int, count: int, pool: list[bytes]):
    rng = random.Random(seed)
    for _ in range(count):
        yield mutate(rng, rng.choice(pool), pool)


# ------------------------------------------------------------------------------ running

def _stream(inputs) -> bytes:
    return b"".join(struct.pack("<I", len(x)) + x for x in inputs)


def _run(exe: Path, inputs: list[bytes]) -> subprocess.CompletedProcess:
    env = dict(os.environ, ASAN_OPTIONS="abort_on_error=1:detect_leaks=1:halt_on_error=1",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    return subprocess.run([str(exe)], input=_stream(inputs), capture_output=True, env=env,
                          timeout=600)


def _minimize(exe: Path, inputs: list[bytes]) -> bytes:
    """The first input of a failing batch that fails alone (bisect)."""
    lo = list(inputs)
    while len(lo) > 1:
        half = lo[:len(lo) // 2]
        lo = half if _run(exe, half).returncode != 0 else lo[len(lo) // 2:]
    return lo[0]


def _save_regression(data: bytes) -> Path:
    REGRESSIONS.mkdir(parents=True, exist_ok=True)
    p = REGRESSIONS / (hashlib.sha256(data).hexdigest()[:16] + ".seg")
    p.write_bytes(data)
    return p


def fuzz(exe: Path, pool: list[bytes], *, seed: int, count: int, batch: int = 2000,
         save=True) -> dict:
    t = time.monotonic()
    done = 0
    batch_inputs: list[bytes] = []

    def flush():
        nonlocal done
        r = _run(exe, batch_inputs)
        if r.returncode != 0:
            bad = _minimize(exe, batch_inputs)
            where = _save_regression(bad) if save else None
            raise AssertionError(
                f"sanitizer/invariant failure (saved as {where}):\n"
                f"{r.stderr.decode(errors='replace')[-4000:]}")
        done += len(batch_inputs)
        batch_inputs.clear()

    for x in pool:
        batch_inputs.append(x)
    for x in gen_inputs(seed, count, pool):
        batch_inputs.append(x)
        if len(batch_inputs) >= batch:
            flush()
    if batch_inputs:
        flush()
    return {"inputs": done, "seconds": time.monotonic() - t}


def run_libfuzzer(exe: Path, pool: list[bytes], work: Path, seconds: int, seed: int = 1):
    cdir = work / "lf-corpus"
    cdir.mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(pool):
        (cdir / f"seed{i}").write_bytes(x)
    art = work / "lf-artifacts"
    art.mkdir(exist_ok=True)
    r = subprocess.run([str(exe), str(cdir), f"-max_total_time={seconds}", f"-seed={seed}",
                        "-max_len=16384", f"-artifact_prefix={art}/", "-print_final_stats=1"],
                       capture_output=True, timeout=seconds + 120)
    crashes = sorted(art.glob("*"))
    for c in crashes:
        _save_regression(c.read_bytes())
    stats = r.stderr.decode(errors="replace")
    runs = next((ln.split(":")[-1].strip() for ln in stats.splitlines()
                 if "stat::number_of_executed_units" in ln), "?")
    return r.returncode, runs, crashes, stats[-3000:]


# ------------------------------------------------------------------------------ tests

@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    res = build(tmp_path_factory.mktemp("asan"))
    if "skip" in res:
        pytest.skip(f"no sanitizer build: {res['skip']} (CI: apt-get install -y clang)")
    return res


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return corpus(tmp_path_factory.mktemp("corpus"))


def test_valid_corpus_is_clean_under_sanitizers(harness, pool):
    r = _run(harness["scan_fuzz"], pool)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    assert r.stdout.decode().split() == ["ok", str(len(pool))]


def test_sanitizers_catch_an_overread(harness, tmp_path):
    """The build really is sanitized: a deliberate one-byte over-read must be reported."""
    src = tmp_path / "over.c"
    src.write_text("#include <stdlib.h>\n#include <string.h>\nint main(void){char *p=malloc(8);"
                   "memset(p,1,8);volatile char c=p[8];(void)c;free(p);return 0;}\n")
    cc = "clang" if shutil.which("clang") else "gcc"
    exe = tmp_path / "over"
    subprocess.run([cc, "-fsanitize=address,undefined", "-g", str(src), "-o", str(exe)],
                   check=True)
    r = subprocess.run([str(exe)], capture_output=True)
    assert r.returncode != 0 and b"heap-buffer-overflow" in r.stderr


def test_fuzz_scanner_smoke(harness, pool):
    """CI smoke: 80,000 mutated stores (~20 s on 2 cores) through the sanitized scanner."""
    res = fuzz(harness["scan_fuzz"], pool, seed=20261129, count=80_000)
    print(f"\n[fuzz] {res['inputs']} inputs through the ASan/UBSan scanner, 0 findings, "
          f"{res['seconds']:.1f}s")


def test_libfuzzer_smoke(harness, pool, tmp_path):
    """Coverage-guided: 20 s of libFuzzer when clang's runtime is present."""
    exe = harness.get("scan_libfuzzer")
    if exe is None:
        pytest.skip("clang/libFuzzer not installed (CI: apt-get install -y clang)")
    rc, runs, crashes, stats = run_libfuzzer(exe, pool, tmp_path, 20)
    print(f"\n[libfuzzer] {runs} executions in 20 s, {len(crashes)} crashes")
    assert rc == 0 and not crashes, stats


def test_fuzz_regressions(harness):
    """Every input that ever failed stays fixed (sanitized harness)."""
    files = sorted(REGRESSIONS.glob("*")) if REGRESSIONS.exists() else []
    if not files:
        pytest.skip("no regression inputs recorded")
    r = subprocess.run([str(harness["scan_fuzz"])] + [str(f) for f in files],
                       capture_output=True)
    assert r.returncode == 0, r.stderr.decode()[-3000:]


def test_mutated_stores_recover_typed(pool, tmp_path):
    """The same mutations through the real recovery (Log.open + scan): a store opens (tail
    cut and reported) or raises CorruptionError - nothing else, never a crash."""
    from aurora_log.errors import CorruptionError
    outcomes = {"opened": 0, "cut": 0, "corruption": 0}
    for i, data in enumerate(gen_inputs(4242, 400, pool)):
        d = tmp_path / f"s{i}"
        (d / "wal").mkdir(parents=True)
        (d / "wal" / "00000000000000000001.seg").write_bytes(data)
        try:
            log = Log.open(d, segment_bytes=4096)
            try:
                for _ in log.scan():
                    pass
                outcomes["cut" if log.report.cuts else "opened"] += 1
            finally:
                log.close()
        except CorruptionError:
            outcomes["corruption"] += 1
        shutil.rmtree(d)
    assert sum(outcomes.values()) == 400
    assert outcomes["corruption"] > 0 and outcomes["cut"] > 0
