"""A recording file layer and a power-cut simulator (the SQLite/ALICE approach).

A workload runs ONCE with `FsRecorder` installed through the C core's syscall table
(aurora_log.testing.faults). The recorder keeps every completed call in order, plus a marker when
each fsync/fdatasync *starts*. `DiskModel` replays that record with page-cache semantics:

* a file has a volatile image (what reads see) and a durable image (what survives a power
  cut). pwrite/ftruncate/O_TRUNC change the volatile image and are queued as "pending";
* fsync/fdatasync(fd) that returns 0 moves the pending changes that had completed before the
  call STARTED into the durable image (conservative for writes racing the sync);
* a directory has volatile and durable entry tables. open(O_CREAT), rename, unlink and mkdir
  change the volatile table; an fsync of the directory fd makes its table durable (the table
  as it was when the fsync started). A directory that is not durably linked into its parent
  takes its whole subtree with it.

`crash_image(i, mode)` = the directory tree as a power cut right after the i-th completed
call would leave it:
    "drop"   every unsynced change is lost;
    "keep"   every unsynced change survives (what kill -9 leaves: the page cache survives);
    "subset" each unsynced change of each file survives with probability 1/2 (in order),
             and so does each directory entry change made since that directory's last
             fsync (creations, renames - each whole -, unlinks; metadata out of order);
    "torn"   every unsynced change survives except the last write of each file, which is
             cut into pieces that are each new data, old data, zeros or garbage.
Directory entries follow the durable tables (changes after the last directory fsync are
undone) in "drop" and "torn"; "keep" keeps them all; "subset" keeps a random subset.

Paths are recorded as absolute paths under `root`; images are relative to it, so an image
can be written anywhere (`materialize`).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
from pathlib import Path

from aurora_log.testing import faults

MODES = ("drop", "keep", "subset", "torn")


class FsRecorder(faults.Hook):
    """Records completed calls (`ops`) and sync-start markers, in causal order. Snapshot of
    the tree under `root` taken at construction = the durable starting state."""
    capture_data = True

    def __init__(self, root):
        self.root = os.path.abspath(str(root))
        self.initial = _snapshot_tree(self.root)
        self.events: list[tuple[str, faults.Op]] = []   # ("start"|"done", op)
        self.ops: list[faults.Op] = []
        self.marks: list[int] = []    # free-form: len(ops) at points the workload chose

    def before(self, op):
        if op.name in ("fsync", "fdatasync"):
            self.events.append(("start", op))
        return None

    def after(self, op):
        self.events.append(("done", op))
        self.ops.append(op)

    @property
    def done(self) -> int:
        """How many calls have completed so far (a crash point index)."""
        return len(self.ops)


def _snapshot_tree(root: str):
    """{relpath: bytes | None(dir)} of everything under root (root excluded)."""
    out = {}
    if not os.path.isdir(root):
        return out
    for dirpath, _dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel != ".":
            out[rel] = None
        for f in filenames:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.normpath(os.path.join(rel, f))] = fh.read()
    return out


# ------------------------------------------------------------------------------ model

def _pid(op) -> int:
    """The recording process of an op (ops merged from several processes carry `pid`)."""
    return getattr(op, "pid", 0)


def _fd(op) -> tuple[int, int | None]:
    return _pid(op), op.fd


class _File:
    __slots__ = ("vol", "dur", "pending", "mark")

    def __init__(self, data=b""):
        self.vol = bytearray(data)
        self.dur = bytearray(data)
        self.pending: list[tuple] = []   # ("w", off, bytes) | ("t", size)
        self.mark = 0

    def apply(self, change, img: bytearray):
        if change[0] == "w":
            _, off, data = change
            end = off + len(data)
            if len(img) < off:
                img.extend(bytes(off - len(img)))
            img[off:end] = data
        else:
            size = change[1]
            if len(img) > size:
                del img[size:]
            else:
                img.extend(bytes(size - len(img)))


class _Dir:
    __slots__ = ("vol", "dur", "snap", "pending", "mark")

    def __init__(self):
        self.vol: dict[str, object] = {}
        self.dur: dict[str, object] = {}
        self.snap = None
        # entry changes since the last fsync of this directory, in order:
        # ("set", name, node) | ("del", name) | ("ren", old, new, node)
        self.pending: list[tuple] = []
        self.mark = 0

    @staticmethod
    def replay(entries: dict, ch: tuple) -> None:
        if ch[0] == "set":
            entries[ch[1]] = ch[2]
        elif ch[0] == "del":
            entries.pop(ch[1], None)
        elif entries.get(ch[1]) is ch[3]:       # a rename happens whole or not at all
            del entries[ch[1]]
            entries[ch[2]] = ch[3]


class DiskModel:
    """Replays a recorder's events; `crash_image` at any point."""

    def __init__(self, rec: FsRecorder, *, failed_fsync: str = "keep"):
        """failed_fsync: what a FAILED fsync/fdatasync does to the writes it covered.
        "keep": they stay pending (a later successful fsync may still persist them);
        "drop_pages": Linux/ext4 writeback-error behaviour ("fsyncgate"): the dirty pages
        are marked clean - reads still see the new bytes, but they never reach the disk."""
        if failed_fsync not in ("keep", "drop_pages"):
            raise ValueError(failed_fsync)
        self.failed_fsync = failed_fsync
        self.rec = rec
        self.root = _Dir()
        # (pid, fd) -> node: each process has its own fd table (an op recorded in one
        # process has no `pid` attribute: 0); fsync is per inode, so every process's fd
        # of one path leads to the same node
        self.fds: dict[tuple[int, int | None], object] = {}
        self.named: dict[str, _File] = {}    # last name of every file ever seen (all_files)
        self.pos = 0          # events consumed
        self.done = 0         # completed calls consumed
        self.unseen_dirs: list[str] = []
        for rel in sorted(rec.initial, key=lambda r: r.count(os.sep)):
            data = rec.initial[rel]
            parent, name = self._parent(rel)
            node = _Dir() if data is None else _File(data)
            parent.vol[name] = parent.dur[name] = node
            if isinstance(node, _File):
                self.named[rel] = node

    # -- path helpers
    def _rel(self, path):
        p = os.path.abspath(path)
        if p == self.rec.root:
            return ""
        if not p.startswith(self.rec.root + os.sep):
            return None
        return os.path.relpath(p, self.rec.root)

    def _parent(self, rel):
        parts = rel.split(os.sep)
        d = self.root
        for part in parts[:-1]:
            nxt = d.vol.get(part)
            if nxt is None:
                # created outside the syscall table (e.g. os.mkdir + os.fsync of the parent
                # in snapshot._ensure_dir): seen only now, taken as durable
                nxt = d.vol[part] = d.dur[part] = _Dir()
                self.unseen_dirs.append(rel)
            d = nxt
        return d, parts[-1]

    def _lookup(self, rel):
        if rel == "":
            return self.root
        try:
            d, name = self._parent(rel)
            return d.vol.get(name)
        except (KeyError, AttributeError):
            return None

    # -- replay
    def advance_to(self, n_done: int) -> None:
        """Consume events until `n_done` calls have completed."""
        ev = self.rec.events
        while self.done < n_done:
            kind, op = ev[self.pos]
            self.pos += 1
            if kind == "start":
                self._sync_started(op)
                continue
            self.done += 1
            if op.errno != 0 or (op.result is not None and op.result < 0):
                if op.name in ("fsync", "fdatasync") and self.failed_fsync == "drop_pages":
                    node = self.fds.get(_fd(op))
                    if isinstance(node, _File):
                        del node.pending[:node.mark]
                        node.mark = 0
                continue
            self._apply(op)
        # also consume sync starts that precede the next completion
        while self.pos < len(ev) and ev[self.pos][0] == "start":
            self._sync_started(ev[self.pos][1])
            self.pos += 1

    def _sync_started(self, op) -> None:
        """An fsync/fdatasync started: it covers what is pending on its file now."""
        node = self.fds.get(_fd(op))
        if isinstance(node, _File):
            node.mark = len(node.pending)
        elif isinstance(node, _Dir):
            node.snap = dict(node.vol)
            node.mark = len(node.pending)

    def _apply(self, op):
        n = op.name
        if n == "open":
            rel = self._rel(op.path)
            if rel is None:
                return
            node = self._lookup(rel)
            if node is None:
                if not op.flags & os.O_CREAT:
                    raise AssertionError(f"open of a missing file succeeded: {op.path}")
                d, name = self._parent(rel)
                node = d.vol[name] = _File()
                d.pending.append(("set", name, node))
                self.named[rel] = node
            elif isinstance(node, _File) and op.flags & os.O_TRUNC:
                node.vol.clear()
                node.pending.append(("t", 0))
            self.fds[_pid(op), op.result] = node
        elif n == "close":
            self.fds.pop(_fd(op), None)
        elif n == "pwrite":
            node = self.fds.get(_fd(op))
            if isinstance(node, _File) and op.data:
                ch = ("w", op.offset, bytes(op.data))
                node.apply(ch, node.vol)
                node.pending.append(ch)
        elif n == "ftruncate":
            node = self.fds.get(_fd(op))
            if isinstance(node, _File):
                ch = ("t", op.size)
                node.apply(ch, node.vol)
                node.pending.append(ch)
        elif n in ("fsync", "fdatasync"):
            node = self.fds.get(_fd(op))
            if isinstance(node, _File):
                k = node.mark
                for ch in node.pending[:k]:
                    node.apply(ch, node.dur)
                del node.pending[:k]
                node.mark = 0
            elif isinstance(node, _Dir):
                node.dur = node.snap if node.snap is not None else dict(node.vol)
                node.snap = None
                del node.pending[:node.mark]
                node.mark = 0
        elif n == "rename":
            a, b = self._rel(op.path), self._rel(op.path2)
            if a is None or b is None:
                return
            da, na = self._parent(a)
            db, nb = self._parent(b)
            node = db.vol[nb] = da.vol.pop(na)
            if isinstance(node, _File):
                if self.named.get(a) is node:
                    del self.named[a]
                self.named[b] = node
            if da is db:
                da.pending.append(("ren", na, nb, node))
            else:
                da.pending.append(("del", na))
                db.pending.append(("set", nb, node))
        elif n == "unlink":
            rel = self._rel(op.path)
            if rel is None:
                return
            d, name = self._parent(rel)
            d.vol.pop(name, None)
            d.pending.append(("del", name))
        elif n == "mkdir":
            rel = self._rel(op.path)
            if rel is None or rel == "":
                return
            d, name = self._parent(rel)
            node = d.vol[name] = _Dir()
            d.pending.append(("set", name, node))

    def all_files(self) -> dict[str, bytes]:
        """{last name: bytes as reads see them} of every file ever seen, unlinked ones
        included (a retired segment keeps its name): the whole history of the tree, e.g.
        every WAL segment ever written, for a reference log."""
        return {rel: bytes(node.vol) for rel, node in self.named.items()}

    # -- images
    def crash_image(self, mode: str = "drop", rng: random.Random | None = None) -> dict:
        """{relpath: bytes | None(dir)} as a power cut now would leave the tree."""
        if mode not in MODES:
            raise ValueError(mode)
        rng = rng or random.Random(0)
        out: dict[str, bytes | None] = {}
        seen: set[int] = set()

        def walk(d: _Dir, prefix: str):
            if mode == "keep":
                entries = d.vol
            elif mode == "subset" and d.pending:
                # metadata may persist out of order before the directory fsync: a random
                # subset of the pending entry changes (each whole), in order
                entries = dict(d.dur)
                for ch in d.pending:
                    if rng.random() < 0.5:
                        _Dir.replay(entries, ch)
            else:
                entries = d.dur
            for name in sorted(entries):
                node = entries[name]
                rel = os.path.join(prefix, name) if prefix else name
                if isinstance(node, _Dir):
                    out[rel] = None
                    walk(node, rel)
                else:
                    out[rel] = self._file_image(node, mode, rng)
                    seen.add(id(node))

        walk(self.root, "")
        return out

    def _file_image(self, f: _File, mode: str, rng: random.Random) -> bytes:
        if mode == "keep" or not f.pending:
            return bytes(f.vol if mode == "keep" else f.dur)
        img = bytearray(f.dur)
        if mode == "drop":
            return bytes(img)
        if mode == "subset":
            for ch in f.pending:
                if rng.random() < 0.5:
                    f.apply(ch, img)
            return bytes(img)
        # torn: all but the last write; the last write in pieces
        last = max((i for i, ch in enumerate(f.pending) if ch[0] == "w"), default=None)
        for i, ch in enumerate(f.pending):
            if i != last:
                f.apply(ch, img)
                continue
            _, off, data = ch
            cuts = sorted({0, len(data), *(rng.randrange(len(data) + 1)
                                           for _ in range(rng.randint(1, 4)))})
            for a, b in zip(cuts, cuts[1:], strict=False):
                kind = rng.randrange(4)
                if kind == 0:
                    piece = data[a:b]
                elif kind == 1:
                    continue                      # never reached the disk: old bytes
                elif kind == 2:
                    piece = bytes(b - a)
                else:
                    piece = rng.randbytes(b - a)
                f.apply(("w", off + a, piece), img)
        return bytes(img)


def image_digest(img: dict) -> str:
    h = hashlib.blake2b(digest_size=16)
    for rel in sorted(img):
        h.update(rel.encode() + b"\0")
        data = img[rel]
        h.update(b"D" if data is None else b"F" + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def materialize(img: dict, dest) -> Path:
    """Write an image under `dest` (emptied first); returns dest."""
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for rel in sorted(img, key=lambda r: r.count(os.sep)):
        p = dest / rel
        if img[rel] is None:
            p.mkdir(mode=0o700, exist_ok=True)
        else:
            p.write_bytes(img[rel])
            os.chmod(p, 0o600)
    return dest


def crash_images(rec: FsRecorder, modes=("drop",), seed: int = 0, points=None):
    """Yields (i, mode, image) for every crash point i in 0..len(rec.ops) (or `points`)."""
    model = DiskModel(rec)
    rng = random.Random(seed)
    pts = range(len(rec.ops) + 1) if points is None else sorted(points)
    for i in pts:
        model.advance_to(i)
        for m in modes:
            yield i, m, model.crash_image(m, rng)
