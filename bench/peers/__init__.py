"""Peer adapters for bench/compare.py: one small module per queue, one tiny interface.

Every system the comparison drives (aurora-log itself, persist-queue, huey's SqliteStorage,
litequeue, a plain sqlite3 table used as a queue) is wrapped in a `Peer` with the same verbs,
so the scenarios in compare.py are written once:

    peer = make("sqlite-full"); peer.open(directory)
    h = peer.handle()                 # per-thread handle (own connection where the peer
                                      # needs one; the shared object where it is thread-safe)
    h.enqueue(payload, level)         # payload: dict; level: 0..9, higher is more urgent
    h.enqueue_many([(payload, level), ...])
    h.claim() -> (ref, payload) | None
    h.complete(ref)
    peer.release(h); peer.reopen(); peer.close(); peer.disk_bytes()

Priorities use one common scale of 10 levels (0..9, higher first). Each adapter maps it to
its own: `aurora_level()` below for aurora-log's four, the raw level for sqlite/huey, and
nothing for the peers that have no priorities (their `supports_priority` is False and the
priority scenario skips them).

A peer module imports its third-party package lazily; `available()` says whether it can run
and, if not, why (the line compare.py prints when it skips a peer).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field

DEFAULT_LEVEL = 4   # the level used when a scenario does not vary priority


def aurora_level(level: int) -> int:
    """Map the common 0..9 scale onto aurora-log's JobPriority values 1..4.

    0-2 -> LOW(1), 3-4 -> NORMAL(2), 5-7 -> HIGH(3), 8-9 -> CRITICAL(4): monotonic (a
    higher level never maps lower), the default level 4 lands on NORMAL, and each of the
    four priorities gets two or three of the ten levels.
    """
    if not 0 <= level <= 9:
        raise ValueError(f"priority level {level} outside 0..9")
    return 1 + (level * 4) // 10


class Unavailable(RuntimeError):
    """The peer's package is not installed (or the queue has not landed yet)."""


class Peer:
    """Base class and interface. Subclasses override the verbs they implement.

    Attributes a subclass sets:
      name               short unique id used on the command line and in the JSON
      label              what the table prints
      setting            the durability setting in words, e.g. "WAL, synchronous=FULL"
      durable            True if an acknowledged enqueue survives power loss
      default_or_strong  "default", "strongest" or "default = strongest"
      supports_priority  whether the priority scenario can run it
      batch_native       whether enqueue_many is one commit (else: a loop of single puts)
      shared_handle      True if one object serves all threads (with the peer's own locks)
      notes              anything a reader should know (serializer, delete-on-dequeue, ...)
    """

    name = "peer"
    label = "peer"
    setting = ""
    durable = True
    default_or_strong = "default"
    supports_priority = True
    batch_native = True
    shared_handle = True
    notes = ""

    def __init__(self):
        self.directory = None

    # -- availability -------------------------------------------------------------------
    @classmethod
    def available(cls) -> tuple[bool, str]:
        return True, ""

    # -- lifecycle ----------------------------------------------------------------------
    def open(self, directory) -> None:
        self.directory = str(directory)
        os.makedirs(self.directory, exist_ok=True)
        self._open()

    def _open(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def reopen(self) -> None:
        self.close()
        self._open()

    def handle(self):
        """An object with enqueue/enqueue_many/claim/complete for the calling thread."""
        return self

    def release(self, handle) -> None:
        """Give back a handle from handle() (closes per-thread connections)."""

    # -- verbs --------------------------------------------------------------------------
    def enqueue(self, payload: dict, level: int = DEFAULT_LEVEL):
        raise NotImplementedError

    def enqueue_many(self, items):
        """items: list of (payload, level). One commit when batch_native."""
        return [self.enqueue(p, lv) for p, lv in items]

    def claim(self):
        raise NotImplementedError

    def complete(self, ref) -> None:
        raise NotImplementedError

    # -- setup and measurement helpers --------------------------------------------------
    def prefill(self, items, chunk: int = 10_000) -> None:
        """Load pending jobs fast, untimed (may relax durability while it runs)."""
        for i in range(0, len(items), chunk):
            self.enqueue_many(items[i:i + chunk])

    compacts = False        # True if compact() writes a snapshot (s6 then reopens again)

    def compact(self) -> None:
        """Write a snapshot / compact now (only for peers with compacts = True)."""
        raise NotImplementedError

    def describe(self) -> dict:
        """Settings as the peer actually runs them (pragmas read back where possible)."""
        return {}

    def disk_bytes(self) -> dict:
        """Bytes of every file under the peer's directory, measured after close():
        apparent (st_size), allocated (st_blocks) and used (bytes holding data; the same as
        apparent unless the peer preallocates)."""
        return directory_bytes(self.directory)

    def info(self) -> dict:
        return {
            "name": self.name, "label": self.label, "setting": self.setting,
            "durable": self.durable, "default_or_strongest": self.default_or_strong,
            "supports_priority": self.supports_priority, "batch_native": self.batch_native,
            "shared_handle": self.shared_handle, "notes": self.notes,
            "compacts": self.compacts,
        }


def directory_bytes(directory) -> dict:
    apparent = allocated = files = 0
    for root, _dirs, names in os.walk(directory):
        for n in names:
            try:
                st = os.stat(os.path.join(root, n))
            except FileNotFoundError:
                continue
            files += 1
            apparent += st.st_size
            allocated += st.st_blocks * 512
    return {"apparent": apparent, "allocated": allocated, "used": apparent, "files": files}


def data_end(path, block: int = 1 << 20) -> int:
    """Offset just past the last non-zero byte of a file (0 for an all-zero file): the
    data in a file whose tail is preallocated zeros."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        end = size
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            chunk = f.read(end - start)
            stripped = chunk.rstrip(b"\0")
            if stripped:
                return start + len(stripped)
            end = start
    return 0


@dataclass
class Spec:
    name: str
    module: str
    cls: str
    kwargs: dict = field(default_factory=dict)
    default: bool = True    # False: run only when named in --peers


# The order here is the order of the table rows.
SPECS = [
    Spec("aurora-sync", "aurora", "AuroraPeer", {"durability": "sync"}),
    Spec("aurora-interval", "aurora", "AuroraPeer", {"durability": "interval"}),
    Spec("sqlite-full", "sqlite_table", "SqliteTablePeer", {"synchronous": "FULL"}),
    Spec("sqlite-normal", "sqlite_table", "SqliteTablePeer", {"synchronous": "NORMAL"}),
    Spec("persist-queue", "persistqueue_peer", "PersistQueuePeer", {}),
    Spec("huey", "huey_peer", "HueyPeer", {}),
    Spec("litequeue-full", "litequeue_peer", "LiteQueuePeer", {"synchronous": "FULL"}),
    Spec("litequeue-default", "litequeue_peer", "LiteQueuePeer", {"synchronous": None}),
]
# Opt-in variants: aurora-log with an explicit store mode, to set shared mode (many
# processes, issue 19) beside the exclusive one in one run, e.g.
#   compare.py --only s1,s2,s4 --peers aurora-sync-excl,aurora-sync-shared
SPECS += [
    Spec("aurora-sync-excl", "aurora", "AuroraPeer", {"durability": "sync", "shared": False},
         default=False),
    Spec("aurora-sync-shared", "aurora", "AuroraPeer", {"durability": "sync", "shared": True},
         default=False),
    Spec("aurora-interval-excl", "aurora", "AuroraPeer",
         {"durability": "interval", "shared": False}, default=False),
    Spec("aurora-interval-shared", "aurora", "AuroraPeer",
         {"durability": "interval", "shared": True}, default=False),
]
NAMES = [s.name for s in SPECS]
DEFAULT_NAMES = [s.name for s in SPECS if s.default]


def spec(name: str) -> Spec:
    for s in SPECS:
        if s.name == name:
            return s
    raise KeyError(f"unknown peer {name!r}; known: {', '.join(NAMES)}")


def peer_class(name: str):
    s = spec(name)
    mod = importlib.import_module(f"{__name__}.{s.module}")
    return getattr(mod, s.cls), s.kwargs


def make(name: str) -> Peer:
    """A new, unopened peer. Raises Unavailable if its package is missing."""
    cls, kwargs = peer_class(name)
    ok, why = cls.available()
    if not ok:
        raise Unavailable(why)
    return cls(**kwargs)


def availability(name: str) -> tuple[bool, str]:
    try:
        cls, _ = peer_class(name)
    except Exception as e:    # an import error in our own adapter is worth seeing
        return False, f"adapter failed to import: {e!r}"
    return cls.available()


class ConnectionPerThreadPeer(Peer):
    """A peer whose threads each need their own connection: ``self._main`` serves the
    single-threaded calls, ``handle()`` opens one more per worker thread. Subclasses set
    ``_handle_class`` (built as ``_handle_class(self.path, self.synchronous)``) and ``path``."""

    _handle_class = None

    def _new_handle(self):
        return self._handle_class(self.path, self.synchronous)

    def _open(self):
        self._main = self._new_handle()

    def close(self):
        for h in self._handles:
            h.close()
        self._handles.clear()
        if self._main is not None:
            self._main.close()
            self._main = None

    def handle(self):
        h = self._new_handle()
        self._handles.append(h)
        return h

    def release(self, handle):
        if handle in self._handles:
            self._handles.remove(handle)
            handle.close()

    def enqueue(self, payload, level=DEFAULT_LEVEL):
        return self._main.enqueue(payload, level)

    def enqueue_many(self, items):
        return self._main.enqueue_many(items)

    def claim(self):
        return self._main.claim()

    def complete(self, ref):
        self._main.complete(ref)
