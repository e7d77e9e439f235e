"""A failed close SEAL (its write or its fdatasync) fails the writer like a failed commit
does, so close() leaves <segment>.unsynced and the next open cuts what was never synced
(fsyncgate, native/FORMAT.md recovery rule 3). Issue 14, item 5."""

import errno

import pytest

from aurora_log.testing import faults
from aurora_log.errors import DurabilityError
from aurora_log.local.log import UNSYNCED, Log

SEG = 1 << 20


def _markers(d):
    return sorted(p.name for p in (d / "wal").iterdir() if p.name.endswith(UNSYNCED))


@pytest.mark.parametrize("op", ["fdatasync", "pwrite"])
def test_a_failed_close_seal_leaves_the_unsynced_marker(store_dir, op):
    log = Log.open(store_dir, segment_bytes=SEG)
    log.commit([(1, b"one")])
    log.commit([(1, b"two")])
    with faults.installed(faults.FailNth(1, err=errno.EIO, ops={op})), \
            pytest.raises(DurabilityError):
        log.close()
    assert _markers(store_dir) == ["00000000000000000001.seg" + UNSYNCED]
    marked = int((store_dir / "wal" / _markers(store_dir)[0]).read_text())
    with Log.open(store_dir, segment_bytes=SEG) as again:
        # everything acknowledged survives; the SEAL (written after the last good
        # fdatasync) is what the marker's offset leaves out
        assert [bytes(p) for _, _, p in again.scan()] == [b"one", b"two"]
        assert marked >= 32
    assert _markers(store_dir) == []
