"""Recording several processes' syscalls in one global order, for the power-cut simulator
(tests/crashsim.py; docs/MULTIPROCESS.md section 13).

Each writing process installs a `ProcessRecorder` (through the C core's syscall table,
aurora_log.testing.faults) that stamps every event with a number from a `SharedCounter`,
one counter for all the processes of a run:

* a completed call takes its number in `after` (the call has returned);
* an fsync/fdatasync also takes one in `before`, its "start" marker.

Why that order is causal across processes: a process publishes a write position on the
control page only after its pwrite returned (docs/MULTIPROCESS.md I1), so after the write's
number was taken; a group-commit leader reads the position before it starts the
fdatasync (I3), so before the sync's start number is taken. A write another process's sync
covers therefore always has a smaller number than that sync's start, and DiskModel's rule
("a sync makes durable what had completed when it started") stays sound: fdatasync is per
inode, whichever process's fd it went through. A write that completes just before a sync
starts but takes its number after it is treated as not covered: conservative, and never
acknowledged on that sync's strength (its position was not published yet).

The workload stamps its own points with `point()` (an operation invoked, acknowledged)
from the same counter; `Merged.point_of` turns any number into a crash point (how many
calls had completed before it), the unit `History`/`Checker` use.

A child writes its events to a file (`dump`); the test process merges the files
(`merge`) into a `Merged` recording that DiskModel replays like one FsRecorder: its ops
carry `pid`, so every process has its own fd table in the model.
"""

from __future__ import annotations

import base64
import bisect
import json
import multiprocessing as mp
import os
import time
from dataclasses import fields
from pathlib import Path

from aurora_log.testing import faults

from crashsim import _snapshot_tree

_OP_FIELDS = [f.name for f in fields(faults.Op) if f.name != "data"]


class SharedCounter:
    """A counter every process forked from the test increments (one global order)."""

    def __init__(self) -> None:
        self._v = mp.get_context("fork").Value("Q", 0)

    def next(self) -> int:
        with self._v.get_lock():
            self._v.value += 1
            return int(self._v.value)


class ProcessRecorder(faults.Hook):
    """One process's calls, each stamped with a global number: `events` holds
    ("start" | "done", number, op).

    sync_seconds: how long each fsync/fdatasync takes at least (a sleep after its start
    marker, the GIL released): a disk slower than tmpfs, so that other processes publish
    writes while a sync is in flight, as they do on a real disk. Those writes are not
    covered by it (their numbers come after its start), and a group commit that counted
    them as covered would show up as lost acknowledged records."""
    capture_data = True

    def __init__(self, counter: SharedCounter, sync_seconds: float = 0.0) -> None:
        self.counter = counter
        self.sync_seconds = sync_seconds
        self.pid = os.getpid()
        self.events: list[tuple[str, int, faults.Op]] = []

    def before(self, op):
        if op.name in ("fsync", "fdatasync"):
            self.events.append(("start", self.counter.next(), op))
            if self.sync_seconds:
                time.sleep(self.sync_seconds)
        return None

    def after(self, op):
        self.events.append(("done", self.counter.next(), op))

    def point(self) -> int:
        """A number in the same order as the events (for the workload's history)."""
        return self.counter.next()

    def dump(self, path) -> None:
        """Write the events as JSON lines (no pickle; bytes as base64)."""
        with open(path, "w") as f:
            for kind, seq, op in self.events:
                d = {k: getattr(op, k) for k in _OP_FIELDS}
                d["data"] = None if op.data is None else base64.b64encode(op.data).decode()
                f.write(json.dumps({"kind": kind, "seq": seq, "pid": self.pid, "op": d}) + "\n")


def _load(path) -> list[tuple[int, str, faults.Op]]:
    """A dump's events; a sync's "start" and "done" events share one Op object, as they
    do in a live recorder (tests/test_powerloss_support.segment_syncs pairs them by it)."""
    out = []
    ops: dict[int, faults.Op] = {}      # the process's own call number -> its Op
    with open(path) as f:
        for line in f:
            e = json.loads(line)
            d = e["op"]
            op = ops.get(d["seq"])
            if op is None:
                data = d.pop("data")
                op = faults.Op(**d, data=None if data is None else base64.b64decode(data))
                op.pid = e["pid"]       # type: ignore[attr-defined]  # DiskModel's fd key
                ops[d["seq"]] = op
            else:                       # the done event of a sync whose start came first
                op.result, op.errno = d["result"], d["errno"]
            out.append((e["seq"], e["kind"], op))
    return out


class Merged:
    """Several processes' recordings in one global order: FsRecorder's interface (root,
    initial, events, ops) for DiskModel and crash_images."""

    def __init__(self, root: str, initial: dict, files) -> None:
        self.root = root
        self.initial = initial
        stamped = sorted(e for path in files for e in _load(path))
        if len({seq for seq, _, _ in stamped}) != len(stamped):
            raise AssertionError("two events with one number: the counter is not shared")
        self.events = [(kind, op) for _, kind, op in stamped]
        self.ops = [op for _, kind, op in stamped if kind == "done"]
        self._done_seqs = [seq for seq, kind, _ in stamped if kind == "done"]

    def point_of(self, seq: int) -> int:
        """The crash point of a number: how many calls had completed before it."""
        return bisect.bisect_left(self._done_seqs, seq)


def initial_tree(root) -> dict:
    """The durable starting state of `root` (take it before any writer starts)."""
    return _snapshot_tree(os.path.abspath(str(root)))


def merge(root, initial: dict, files) -> Merged:
    return Merged(os.path.abspath(str(root)), initial, [Path(f) for f in files])
