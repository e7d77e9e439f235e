"""The local engine: one directory on one machine.

    queue.py     Queue: the engine face (validate, plan, append, apply, wait)
    order.py     the claim order: which waiting job a claim takes next (ClaimOrder.best)
    state.py     the fold: records -> job table (apply) and the records operations write (plan_*)
    table.py     how a job is held: blob head fields, Rec, the lazy table of a snapshot
    replay.py    a base state + the log records after it, folded (recovery, as_of, verify)
    snapfile.py  the snapshot format: State <-> bytes
    snapshot.py  snapshot files: recovery, time travel, compaction (Compactor)
    verify.py    a read-only check of a whole store
    records.py   the transition records: encode/decode
    log.py       the write-ahead log (the C core's Python face); _binding.py loads the core
    locks.py     the queue's lock
"""
