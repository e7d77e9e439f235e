"""``verify(path)``: a read-only check of a whole store.

Reads every snapshot (DIR/snap, DIR/archive/snap) and every segment (DIR/archive/wal, then
DIR/wal) without changing a byte: no lock is taken (a worker may hold the store; reading is
safe), no torn tail is cut, nothing is moved. It checks

* every checksum: segment headers, batches and records (``Log.scan``), each snapshot's
  header, body crc, lz4 frame and content checksum, item count and state rebuild;
* LSN continuity: within and across segments, from the archive into the live WAL, and that
  the newest valid snapshot plus the stored log reaches the log's end (or the log starts at
  LSN 1);
* that each snapshot agrees with the replay of the log up to its LSN (counts per status,
  and the full fingerprint for stores of up to ``deep_limit`` jobs);
* state invariants over the replayed records: every lease ends (a record that ends,
  extends or reports on an attempt names the attempt's live token), no two live leases per
  job (no claim of a job whose lease is live), retry counts never decrease (except the
  operator's re-drive of a dead letter, which resets them), no record the fold refuses.

Returns a VerifyReport: ``ok``, ``problems`` (each with file / offset / LSN where known),
``warnings`` (a torn tail that the next writable open would cut: a crash artefact, not
corruption), and counts. The CLI prints it (``str(report)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import records as R
from ..errors import CorruptionError
from .log import Log
from .replay import replay
from .snapshot import list_snapshots, load_snapshot
from .state import State
from .table import RUNNING, Rec

__all__ = ["verify", "VerifyReport", "Problem"]

_ENDS = (R.COMPLETE, R.FAIL, R.REAP, R.RELEASE)
_NO_JOB = (R.Purge, R.Attach, R.Detach, R.ProcGone)    # records that name no one job
_ON_ATTEMPT = (R.HEARTBEAT, R.PROGRESS)


@dataclass(frozen=True)
class Problem:
    kind: str                  # "checksum", "continuity", "snapshot", "invariant", ...
    message: str
    file: str | None = None
    offset: int | None = None
    lsn: int | None = None

    def __str__(self) -> str:
        where = [f"file {self.file}"] if self.file else []
        if self.offset is not None:
            where.append(f"offset {self.offset}")
        if self.lsn is not None:
            where.append(f"LSN {self.lsn}")
        return f"[{self.kind}] {self.message}" + (f" ({', '.join(where)})" if where else "")


@dataclass
class VerifyReport:
    path: str
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    segments: int = 0
    archived_segments: int = 0
    records: int = 0               # records read and checked
    first_lsn: int = 0             # oldest stored LSN (archive included)
    next_lsn: int = 0
    snapshots: int = 0
    valid_snapshots: int = 0
    base_lsn: int = 0              # the replay started after this snapshot LSN (0 = LSN 1)
    jobs: int = 0                  # jobs in the replayed state

    @property
    def ok(self) -> bool:
        return not self.problems

    def _p(self, kind, message, file=None, offset=None, lsn=None):
        if len(self.problems) < 1000:
            self.problems.append(Problem(kind, message, file, offset, lsn))

    def __str__(self) -> str:
        lines = [f"verify {self.path}: {'OK' if self.ok else 'PROBLEMS'}",
                 f"  segments {self.segments} (+{self.archived_segments} archived), records "
                 f"{self.records}, LSN {self.first_lsn}..{self.next_lsn - 1}",
                 f"  snapshots {self.valid_snapshots}/{self.snapshots} valid, replay from "
                 f"LSN {self.base_lsn + 1}, jobs {self.jobs}"]
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def verify(path, *, deep_limit: int = 100_000) -> VerifyReport:
    """Check the store in directory ``path`` without changing it. See the module doc."""
    root = Path(path)
    rep = VerifyReport(str(root))
    if not root.is_dir():
        rep._p("missing", "no such store directory", str(root))
        return rep

    # ---- snapshots: every one, fully decoded
    snaps: dict[int, tuple[Path, State]] = {}
    for where in (root / "snap", root / "archive" / "snap"):
        for lsn, p in list_snapshots(where):
            rep.snapshots += 1
            try:
                info, st = load_snapshot(p)
                if info.lsn != lsn:
                    raise CorruptionError(f"header LSN {info.lsn} does not match the name",
                                          file=str(p), offset=16)
            except CorruptionError as e:
                rep._p("snapshot", e.reason, e.file or str(p), e.offset, e.lsn or lsn)
                continue
            except OSError as e:
                rep._p("snapshot", f"unreadable: {e}", str(p), None, lsn)
                continue
            rep.valid_snapshots += 1
            snaps.setdefault(lsn, (p, st))
    for d in (root / "snap", root / "archive" / "snap"):
        if d.is_dir():
            for name in sorted(x.name for x in d.iterdir()):
                if name.endswith(".broken") or name.endswith(".tmp"):
                    rep.warnings.append(Problem("snapshot", "set aside / leftover file "
                                                "(not used)", str(d / name)))

    # ---- logs: archive then live, read_only (no lock, nothing cut)
    logs = []
    try:
        if (root / "archive" / "wal").is_dir():
            try:
                lg = Log.open(root / "archive", read_only=True, continued=True)
                logs.append(("archive", lg))
                rep.archived_segments = lg.report.segments
            except CorruptionError as e:
                rep._p("checksum", e.reason, e.file, e.offset, e.lsn)
        try:
            lg = Log.open(root, read_only=True)
            logs.append(("wal", lg))
            rep.segments = lg.report.segments
            for cut in lg.report.cuts:
                rep.warnings.append(Problem(
                    "torn-tail", f"{cut.bytes} bytes after the last complete batch "
                    f"({cut.reason}); the next writable open cuts them", cut.file,
                    cut.offset, cut.lsn))
        except CorruptionError as e:
            rep._p("checksum", e.reason, e.file, e.offset, e.lsn)
        if not logs:
            return rep
        _replay(rep, logs, snaps, deep_limit)
    finally:
        for _, lg in logs:
            lg.close()
    return rep


def _replay(rep: VerifyReport, logs, snaps, deep_limit: int) -> None:
    first = min(lg.first_lsn for _, lg in logs if lg.report.segments) \
        if any(lg.report.segments for _, lg in logs) else 1
    nxt = max(lg.next_lsn for _, lg in logs)
    rep.first_lsn, rep.next_lsn = first, nxt
    # the base: LSN 1 if the stored history starts there, else the oldest snapshot the log
    # continues from (the newest would check less of the log)
    base_lsn, state = 0, None
    if first > 1:
        for lsn in sorted(snaps):
            if first <= lsn + 1 <= nxt:
                base_lsn, state = lsn, State.from_export(snaps[lsn][1].export())
                break
        if state is None:
            rep._p("continuity", f"the stored log starts at LSN {first} and no valid "
                   "snapshot covers the records before it", lsn=first)
            return
    if state is None:
        state = State()
    rep.base_lsn = base_lsn
    # every LSN from the base on must be stored: the logs, in order, continue each other
    expected = base_lsn + 1
    for name, lg in logs:
        if lg.next_lsn <= expected:
            continue
        if lg.first_lsn > expected:
            rep._p("continuity", f"LSN {expected} to {lg.first_lsn - 1} missing before "
                   f"the {name} log", str(lg.directory), lsn=expected)
            return
        expected = lg.next_lsn
    checks = _Checks(rep, state, snaps, deep_limit)
    try:
        done = replay([lg for _, lg in logs], state, base_lsn, check=checks)
    except CorruptionError as e:
        rep._p("checksum", e.reason, e.file, e.offset, e.lsn)
        return
    if done.next_lsn != nxt:
        rep._p("continuity", f"replay ended at LSN {done.next_lsn - 1}, the log's end is "
               f"{nxt - 1}", lsn=done.next_lsn)
    for lsn, why in state.anomalies:
        rep._p("invariant", f"record did not apply: {why}", lsn=lsn)
    jobs = state.jobs
    for jid, tok in checks.live.items():
        v = jobs.get(jid)
        if type(v) is not Rec or v.status != RUNNING or v.token != tok:
            rep._p("invariant", f"job {jid}: a lease is live in the records but the job is "
                   "not running under it")
    rep.jobs = len(jobs)


class _Checks:
    """verify's checks beside the replay (replay.ReplayCheck): every record counted, the
    lease and retry invariants, and each snapshot compared with the replay at its LSN."""

    def __init__(self, rep: VerifyReport, state: State, snaps, deep_limit: int) -> None:
        self.rep = rep
        self.snaps = snaps
        self.deep_limit = deep_limit
        self.live: dict[str, bytes | None] = {}      # job id -> live attempt token
        for jid, v in state.jobs.items():
            if type(v) is Rec and v.status == RUNNING:
                self.live[jid] = v.token
        self._retry_before = 0

    def undecodable(self, lsn: int, error: CorruptionError) -> None:
        self.rep.records += 1
        self.rep._p("record", f"record does not decode: {error.reason}", lsn=lsn)

    def before(self, state: State, lsn: int, rtype: int, rec: R.Record) -> None:
        rep, live = self.rep, self.live
        rep.records += 1
        if type(rec) in _NO_JOB:
            return
        assert not isinstance(rec, (R.Purge, R.Attach, R.Detach, R.ProcGone))
        jid = rec.id
        v = state.jobs.get(jid)
        self._retry_before = v.retry if type(v) is Rec else 0
        if type(rec) is R.Claim:
            if jid in live:
                rep._p("invariant", f"job {jid} claimed while a lease is live (two leases)",
                       lsn=lsn)
            live[jid] = rec.token
        elif rtype in _ENDS or rtype in _ON_ATTEMPT:
            assert isinstance(rec, (R.Complete, R.Fail, R.Reap, R.Heartbeat, R.Progress))
            if live.get(jid) != rec.token:
                rep._p("invariant", f"{R.RECORD_NAMES[rtype]} of job {jid} names an attempt "
                       "token that holds no live lease", lsn=lsn)
            elif rtype in _ENDS:
                del live[jid]

    def after(self, state: State, lsn: int, rtype: int, rec: R.Record) -> None:
        rep, jobs = self.rep, state.jobs
        if type(rec) is R.Purge:
            for jid in rec.ids:
                if jid in self.live and jid not in jobs:
                    rep._p("invariant", f"job {jid} purged with a live lease", lsn=lsn)
                    self.live.pop(jid, None)
        elif type(rec) not in _NO_JOB:
            assert not isinstance(rec, (R.Purge, R.Attach, R.Detach, R.ProcGone))
            v = jobs.get(rec.id)
            if rtype != R.RETRY_DEAD and type(v) is Rec and v.retry < self._retry_before:
                rep._p("invariant", f"job {rec.id}: retry count went down "
                       f"({self._retry_before} -> {v.retry})", lsn=lsn)
        if lsn in self.snaps:
            _compare(rep, state, self.snaps[lsn], lsn, self.deep_limit)


def _compare(rep, state: State, snap, lsn: int, deep_limit: int) -> None:
    path, st = snap
    if len(st.jobs) != len(state.jobs) or st.stats() != state.stats():
        rep._p("snapshot", f"snapshot disagrees with the log replayed to LSN {lsn}: "
               f"{len(st.jobs)} jobs vs {len(state.jobs)}", str(path), lsn=lsn)
    elif len(state.jobs) <= deep_limit and st.fingerprint() != state.fingerprint():
        rep._p("snapshot", f"snapshot disagrees with the log replayed to LSN {lsn} (job "
               "contents)", str(path), lsn=lsn)
