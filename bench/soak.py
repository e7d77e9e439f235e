"""The long runs of the crash-consistency suite (issue 6), outside CI.

    python bench/soak.py kill9     [--cycles 1000] [--seed 1] [--rotate 25]
    python bench/soak.py mpkill9   [--cycles 500] [--seed 1] [--producers 2] [--workers 2]
    python bench/soak.py mpmodel   [--examples 200] [--steps 50]
    python bench/soak.py powerloss [--steps 2000] [--seeds 3] [--modes drop,torn,subset,keep]
    python bench/soak.py bitflips  [--segments 3] [--segment-bytes 4096]
    python bench/soak.py fuzz      [--inputs 2000000] [--libfuzzer-seconds 600] [--seed 7]
    python bench/soak.py all       (each of the above with its defaults)

Each prints one summary line per run in the README table's terms and exits 1 on any
finding (lost, phantom, resurrected, duplicated, hole, silent corruption, sanitizer report).
The harnesses are the CI ones in tests/ (crashsim.py, checker.py, test_kill9.py,
test_fuzz_native.py); only the counts differ.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))


def _scratch() -> Path:
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="aurora-soak-", dir=base))


def soak_kill9(args) -> bool:
    import test_kill9 as k
    d = Path(tempfile.mkdtemp(prefix="aurora-soak-kill9-"))   # a real disk: real fsyncs
    try:
        t = k.run_cycles(d / "store", args.cycles, seed=args.seed, max_run=args.max_run,
                         rotate_every=args.rotate, progress=50)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    print(f"kill9: {t.line()}")
    for name in ("lost", "phantom", "resurrected", "duplicated", "child_errors"):
        for x in getattr(t, name)[:5]:
            print(f"  {name}: {x}")
    return t.ok and t.cycles == args.cycles


def soak_mpkill9(args) -> bool:
    """kill -9 of random producer/worker processes sharing one store (issue 19)."""
    import test_multiprocess_kill9 as k
    from mp_support import second_open_refused
    why = second_open_refused()
    if why is not None:
        print(f"mpkill9: skipped: {why}")
        return True
    d = Path(tempfile.mkdtemp(prefix="aurora-soak-mpkill9-"))   # a real disk: real fsyncs
    try:
        t = k.run_cycles(d / "store", args.cycles, seed=args.seed, producers=args.producers,
                         workers=args.workers, progress=50)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    print(f"mpkill9: {t.line()}")
    for name in ("lost", "phantom", "resurrected", "duplicated", "not_returned",
                 "child_errors"):
        for x in getattr(t, name)[:5]:
            print(f"  {name}: {x}")
    slow = [s for s in t.returned_s if s >= k.REDELIVERY_BOUND]
    if slow:
        print(f"  {len(slow)} returns slower than {k.REDELIVERY_BOUND}s: {sorted(slow)[-5:]}")
    return t.ok and t.cycles == args.cycles and not slow


def soak_mpmodel(args) -> bool:
    """The 3-process state machine against the reference model, with more examples."""
    import test_multiprocess_model as m
    from mp_support import second_open_refused
    why = second_open_refused()
    if why is not None:
        print(f"mpmodel: skipped: {why}")
        return True
    start = time.monotonic()
    try:
        m.run_model(examples=args.examples, steps=args.steps)
    except Exception as e:  # noqa: BLE001 - hypothesis printed the shrunk failing steps
        print(f"mpmodel: FAILED: {e}")
        return False
    print(f"mpmodel: {args.examples} examples x {args.steps} steps in 3 processes, "
          f"every process's view equal to the model; {time.monotonic() - start:.0f}s")
    return True


def soak_powerloss(args) -> bool:
    from test_powerloss_support import (COMPACTION_OPTIONS, compaction, dead_letter, mix,
                                        record, replay, rolls)
    modes = tuple(args.modes.split(","))
    ok = True
    runs = []
    for i in range(args.seeds):
        seed = args.seed + i
        runs += [
            (f"mix{args.steps}/sync", functools.partial(mix, steps=args.steps), "sync",
             dict(segment_bytes=16 << 10), seed),
            (f"mix{args.steps}/interval", functools.partial(mix, steps=args.steps,
                                                             relaxed=True), "interval",
             dict(segment_bytes=16 << 10), seed),
            ("rolls/sync", rolls, "sync", dict(segment_bytes=4096), seed),
            ("dead_letter/sync", dead_letter, "sync", dict(segment_bytes=4096), seed),
            ("compaction x8/sync", functools.partial(compaction, rounds=8), "sync",
             COMPACTION_OPTIONS, seed),
        ]
    for name, wl, dur, opts, seed in runs:
        tmp = _scratch()
        try:
            rc = record(tmp / "rec", wl, durability=dur, seed=seed, **opts)
            s = replay(tmp, rc, modes, seed=seed, drain=args.drain)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"powerloss {name} seed {seed}: {s.points} crash points, {s.images} images, "
              f"{s.distinct} recovered, {s.cut_tails} tails cut; lost {s.lost}, phantom "
              f"{s.phantom}, resurrected {s.resurrected}, duplicated {s.duplicated}, holes "
              f"{s.holes}; {s.seconds:.0f}s", flush=True)
        for f in s.failures[:5]:
            print("  " + f)
        ok = ok and not s.failures
    return ok


def soak_bitflips(args) -> bool:
    """Every bit of every byte of a store with `segments` segments, flipped one at a time:
    each flip must be detected (CorruptionError, or a tail cut and reported), never a
    silently different set of records."""
    from aurora_log.errors import CorruptionError
    from aurora_log.local.log import Log
    tmp = _scratch()
    try:
        src = tmp / "src"
        rng = random.Random(args.seed)
        log = Log.open(src, segment_bytes=args.segment_bytes)
        while len(log.segments()) < args.segments:
            log.commit([(rng.randrange(1, 256), rng.randbytes(rng.randrange(0, 300)))
                        for _ in range(rng.randint(1, 3))])
        log.close()
        with Log.open(src, read_only=True) as lg:
            want = list(lg.scan())
        files = sorted((src / "wal").glob("*.seg"))
        counts = {"raised": 0, "cut": 0, "silent": 0, "harmless": 0}
        silent = []
        t = time.monotonic()
        work = tmp / "w"
        for f in files:
            orig = f.read_bytes()
            for off in range(len(orig)):
                for bit in range(8):
                    if work.exists():
                        shutil.rmtree(work)
                    shutil.copytree(src, work)
                    b = bytearray(orig)
                    b[off] ^= 1 << bit
                    (work / "wal" / f.name).write_bytes(b)
                    try:
                        with Log.open(work, segment_bytes=args.segment_bytes) as lg:
                            got = list(lg.scan())
                            cut = lg.report.truncated
                    except CorruptionError:
                        counts["raised"] += 1
                        continue
                    if cut:
                        counts["cut"] += 1
                        if got != want[:len(got)]:
                            silent.append((f.name, off, bit, "cut but kept records differ"))
                    elif got == want:
                        counts["harmless"] += 1
                    else:
                        counts["silent"] += 1
                        silent.append((f.name, off, bit))
            print(f"  {f.name}: {len(orig) * 8} flips done ({time.monotonic() - t:.0f}s)",
                  flush=True)
        total = sum(counts.values())
        print(f"bitflips: {total} single-bit flips over {len(files)} segments "
              f"({sum(f.stat().st_size for f in files)} bytes): raised {counts['raised']}, "
              f"cut+reported {counts['cut']}, harmless {counts['harmless']}, "
              f"silent corruption {counts['silent']}; {time.monotonic() - t:.0f}s")
        for s in silent[:10]:
            print(f"  silent: {s}")
        return not silent
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def soak_fuzz(args) -> bool:
    import test_fuzz_native as f
    tmp = _scratch()
    try:
        res = f.build(tmp / "asan")
        if "skip" in res:
            print(f"fuzz: skipped: {res['skip']} (apt-get install -y clang)")
            return True
        pool = f.corpus(tmp / "corpus")
        r = f.fuzz(res["scan_fuzz"], pool, seed=args.seed, count=args.inputs, batch=5000)
        print(f"fuzz: {r['inputs']} mutated stores through the ASan/UBSan scanner, 0 findings;"
              f" {r['seconds']:.0f}s", flush=True)
        if res.get("scan_libfuzzer") and args.libfuzzer_seconds:
            rc, runs, crashes, stats = f.run_libfuzzer(res["scan_libfuzzer"], pool, tmp,
                                                       args.libfuzzer_seconds, seed=args.seed)
            print(f"libfuzzer: {runs} executions in {args.libfuzzer_seconds}s, "
                  f"{len(crashes)} crashes (saved under tests/fuzz/regressions/)")
            if rc != 0 or crashes:
                print(stats)
                return False
        return True
    except AssertionError as e:
        print(f"fuzz: FINDING: {e}")
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    k = sub.add_parser("kill9")
    k.add_argument("--cycles", type=int, default=1000)
    k.add_argument("--seed", type=int, default=1)
    k.add_argument("--rotate", type=int, default=25, help="new store every N cycles")
    k.add_argument("--max-run", type=float, default=0.6)
    mk = sub.add_parser("mpkill9")
    mk.add_argument("--cycles", type=int, default=500)
    mk.add_argument("--seed", type=int, default=1)
    mk.add_argument("--producers", type=int, default=2)
    mk.add_argument("--workers", type=int, default=2)
    mm = sub.add_parser("mpmodel")
    mm.add_argument("--examples", type=int, default=200)
    mm.add_argument("--steps", type=int, default=50)
    pl = sub.add_parser("powerloss")
    pl.add_argument("--steps", type=int, default=2000)
    pl.add_argument("--seeds", type=int, default=3)
    pl.add_argument("--seed", type=int, default=1000)
    pl.add_argument("--modes", default="drop,torn,subset,keep")
    pl.add_argument("--drain", action="store_true")
    b = sub.add_parser("bitflips")
    b.add_argument("--segments", type=int, default=3)
    b.add_argument("--segment-bytes", type=int, default=4096)
    b.add_argument("--seed", type=int, default=5)
    fz = sub.add_parser("fuzz")
    fz.add_argument("--inputs", type=int, default=2_000_000)
    fz.add_argument("--libfuzzer-seconds", type=int, default=600)
    fz.add_argument("--seed", type=int, default=7)
    sub.add_parser("all")
    args = p.parse_args(argv)
    if args.what == "all":
        ok = True
        for name, fn in (("kill9", soak_kill9), ("mpkill9", soak_mpkill9),
                         ("mpmodel", soak_mpmodel), ("powerloss", soak_powerloss),
                         ("bitflips", soak_bitflips), ("fuzz", soak_fuzz)):
            ok = fn(p.parse_args([name])) and ok
        return 0 if ok else 1
    fn = {"kill9": soak_kill9, "mpkill9": soak_mpkill9, "mpmodel": soak_mpmodel,
          "powerloss": soak_powerloss, "bitflips": soak_bitflips,
          "fuzz": soak_fuzz}[args.what]
    return 0 if fn(args) else 1


if __name__ == "__main__":
    sys.exit(main())
