"""pytest-benchmark for every system bench/compare.py knows: aurora-log and its peers.

    pip install -r bench/requirements.txt
    pytest bench/test_bench_peers.py --benchmark-autosave          # save a baseline
    pytest bench/ --benchmark-compare                              # compare with the last one

Groups (one per operation, every system side by side): enqueue-durable-1, enqueue-many-1000,
claim-complete-1. Systems whose package is missing (or aurora-log before its queue lands)
are skipped. bench/compare.py is the one-shot comparison with ratios, threads, floors and
reopen/RSS; this file is the per-commit regression view.

The queues are created under $AURORA_BENCH_DIR if set, else pytest's tmp_path: on machines
where /tmp is tmpfs, set AURORA_BENCH_DIR to a directory on a real disk, or the durable
numbers measure memory, not fsync.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import peers  # noqa: E402

pytest.importorskip("pytest_benchmark")


def _payload(i):
    return {"i": i, "level": peers.DEFAULT_LEVEL, "email": f"user{i:08d}@example.com",
            "template": "welcome-v2", "lang": "en", "pad": "x" * 16}


@pytest.fixture(params=peers.NAMES)
def peer(request, tmp_path):
    name = request.param
    ok, why = peers.availability(name)
    if not ok:
        pytest.skip(f"{name}: {why}")
    base = os.environ.get("AURORA_BENCH_DIR")
    d = (os.path.join(base, f"{request.node.name}-{os.getpid()}") if base
         else str(tmp_path / "q"))
    p = peers.make(name)
    p.open(d)
    yield p
    p.close()
    if base:
        import shutil
        shutil.rmtree(d, ignore_errors=True)


def test_enqueue_durable(benchmark, peer):
    benchmark.group = "enqueue-durable-1"
    benchmark.extra_info["setting"] = peer.setting
    pl = _payload(1)
    benchmark(peer.enqueue, pl, peers.DEFAULT_LEVEL)


def test_enqueue_many_1000(benchmark, peer):
    benchmark.group = "enqueue-many-1000"
    benchmark.extra_info["setting"] = peer.setting
    benchmark.extra_info["batch_native"] = peer.batch_native
    its = [(_payload(i), peers.DEFAULT_LEVEL) for i in range(1000)]
    # A peer without a batch API does 1,000 commits per call: a few rounds are enough.
    rounds = 10 if peer.batch_native else 3
    benchmark.pedantic(peer.enqueue_many, args=(its,), rounds=rounds, iterations=1,
                       warmup_rounds=1)


def test_claim_complete(benchmark, peer):
    benchmark.group = "claim-complete-1"
    benchmark.extra_info["setting"] = peer.setting
    rounds = 500
    peer.prefill([(_payload(i), peers.DEFAULT_LEVEL) for i in range(rounds + 50)])
    os.sync()   # the fill's dirty pages would otherwise slow the first fsyncs (compare.py's settle)

    def claim_complete():
        r = peer.claim()
        assert r is not None
        peer.complete(r[0])

    benchmark.pedantic(claim_complete, rounds=rounds, iterations=1, warmup_rounds=10)
