/* aurora-log C core: public API (mirrored in native/build_ffi.py's cdef).
 * See native/FORMAT.md for every byte written here. */
#ifndef AURORA_H
#define AURORA_H

#include <stddef.h>
#include <stdint.h>

/* ---- error codes: 0 = ok, -errno for an I/O error, or one of these ---- */
#define AU_E_FAILED  (-10001)  /* the writer failed earlier; see au_writer_failed() */
#define AU_E_CLOSED  (-10002)
#define AU_E_INVAL   (-10003)
#define AU_E_TOOBIG  (-10004)
/* au_append_now1 only (not errors): nothing appended, call au_append_at1 instead;
 * appended but not yet written, call au_write_through */
#define AU_AGAIN     1
#define AU_QUEUED    2

#define AU_SEG_HDR     32
#define AU_BATCH_HDR   32
#define AU_REC_HDR     17
#define AU_MAX_BATCH   (256u << 20)
#define AU_FLAG_SEAL   1u
#define AU_FLAG_NEXT   2u          /* with SEAL, at a roll: the next segment exists */
#define AU_MAX_RECORD  (255u << 20) /* the largest max_record_bytes; version 1 segments */

#define AU_MODE_SYNC     0
#define AU_MODE_INTERVAL 1
#define AU_MODE_OS       2

#define AU_WAIT_NONE     0
#define AU_WAIT_WRITTEN  1
#define AU_WAIT_MODE     2
#define AU_WAIT_SYNCED   3

/* ---- crc32c ---- */
uint32_t au_crc32c(uint32_t crc, const void *buf, size_t len);     /* chosen at run time */
uint32_t au_crc32c_sw(uint32_t crc, const void *buf, size_t len);  /* table (slicing-by-8) */
uint32_t au_crc32c_hw(uint32_t crc, const void *buf, size_t len);  /* hardware; sw if absent */
int au_crc32c_hw_available(void);
uint32_t au_crc_mask(uint32_t crc);
uint32_t au_crc_unmask(uint32_t masked);

/* ---- the syscall table (defaults, helpers: native/sys.c; FORMAT.md "Syscall table") ---- */
struct au_sys {
    int (*open)(const char *path, int flags, int mode);
    int (*close)(int fd);
    int64_t (*pwrite)(int fd, const void *buf, size_t n, int64_t off);
    int64_t (*pread)(int fd, void *buf, size_t n, int64_t off);
    int (*fdatasync)(int fd);
    int (*fsync)(int fd);
    int (*ftruncate)(int fd, int64_t len);
    int (*rename)(const char *from, const char *to);
    int (*unlink)(const char *path);
    int (*mkdir)(const char *path, int mode);
    int (*flock)(int fd, int op);
};
extern struct au_sys au_sys;
extern const struct au_sys au_sys_default;

/* helpers that go through the table; return >= 0 or -errno */
int au_open(const char *path, int flags, int mode);
int au_close(int fd);
int64_t au_pwrite_full(int fd, const void *buf, size_t n, int64_t off); /* retries short/EINTR */
int64_t au_pread_full(int fd, void *buf, size_t n, int64_t off);        /* stops at EOF */
int au_fdatasync(int fd);
int au_fsync(int fd);
int au_ftruncate(int fd, int64_t len);
int au_rename(const char *from, const char *to);
int au_unlink(const char *path);
int au_mkdir(const char *path, int mode);
int au_flock(int fd, int op);
int au_fsync_dir(const char *path);
int64_t au_file_size(int fd);   /* fstat (not in the table: it changes nothing) */
int au_lock_ex_nb(void);        /* LOCK_EX | LOCK_NB */
int au_o_cloexec(void);
int au_o_directory(void);

/* ---- format: segment headers, scanning ---- */
void au_segment_header_make(uint8_t *hdr32, uint64_t first_lsn, uint64_t size,
                            uint32_t max_record);
/* reason; *max_record = the record limit the segment was written with (version 1:
 * AU_MAX_RECORD, the limit was not recorded) */
int au_segment_header_check(const uint8_t *hdr, size_t n, uint64_t *first_lsn,
                            uint64_t *size, uint32_t *max_record);
int au_segment_create(const char *wal_dir, uint64_t first_lsn, uint64_t size,
                      uint32_t max_record);
/* Zero-filling ahead (FORMAT.md "Preallocation"): a segment bigger than the initial fill
 * (step + ahead) is sized with ftruncate and only its first step + ahead bytes written as
 * zeros; au_fill_ahead keeps `ahead` bytes of zeros past the end of data, in steps.
 * au_set_fill_ahead changes both, process-wide, from the next file created or batch
 * written (tests: small segments with holes; step 0 = the default step). */
#define AU_FILL_STEP  (1u << 20)
#define AU_FILL_AHEAD (4u << 20)
void au_set_fill_ahead(uint64_t step, uint64_t ahead);
uint64_t au_fill_initial(void);
int64_t au_fill_ahead(int fd, uint64_t before, uint64_t after, uint64_t size);
const char *au_reason(int reason);

typedef struct {
    uint64_t lsn;
    uint64_t off;     /* payload offset in the scanned buffer */
    uint32_t len;
    uint32_t type;
} au_rec;

typedef struct {
    uint64_t pos;        /* in/out: next batch header offset */
    uint64_t next_lsn;   /* in/out: LSN expected next */
    uint64_t limit;      /* in: bytes of the buffer to consider */
    uint64_t rec_pos;    /* internal: next frame of the current (verified) batch */
    uint32_t rec_left;   /* internal */
    uint32_t max_record; /* in */
    int32_t status;      /* out: AU_SCAN_* */
    int32_t reason;      /* out: AU_R_* when status == AU_SCAN_BAD */
    uint64_t bad_off;    /* out */
    uint64_t last_durable_end;
    uint64_t batches;
    uint32_t last_flags;
    uint32_t pad_;
} au_scan;

#define AU_SCAN_MORE 0
#define AU_SCAN_END  1
#define AU_SCAN_BAD  2

size_t au_scan_next(const uint8_t *buf, au_scan *s, au_rec *out, size_t cap);
int64_t au_first_nonzero(const uint8_t *buf, uint64_t from, uint64_t limit);
int64_t au_last_nonzero(const uint8_t *buf, uint64_t from, uint64_t limit);
int64_t au_find_durable_evidence(const uint8_t *buf, uint64_t limit, uint64_t x,
                                 uint32_t max_record);

/* ---- snapshot column helpers (native/columns.c) ---- */
/* out[0] = start, out[k + 1] = out[k] + v[k] (n + 1 entries); returns out[n]. */
uint64_t au_prefix_sum_u32(const uint32_t *v, uint64_t n, uint64_t start, uint64_t *out);

/* ---- replay's bulk ENQUEUE fold (native/enqrun.c) ---- */
#define AU_ENQUEUE_TYPE 1
/* How many of recs[0..n) form a run of plain ENQUEUE records of recs[0]'s (job_type,
 * queue) pair (0: recs[0] is not one). */
size_t au_enq_run_len(const uint8_t *buf, const au_rec *recs, size_t n);
/* For a run of m records (au_enq_run_len): the job blobs back to back into blobs (blob k
 * ends at blob_ends[k]), the ids each followed by "\n" into ids (*ids_len bytes), and per
 * job its due time (clamped to 0..max_due if scheduled), record time and priority;
 * *rec_bytes = the records' bytes with their frame headers.
 * blobs and ids need at most the records' total length each. Returns m. */
size_t au_enq_run_build(const uint8_t *buf, const au_rec *recs, size_t m, uint32_t pair,
                        int64_t max_due, uint8_t *blobs, uint64_t *blob_ends, uint8_t *ids,
                        uint64_t *ids_len, int64_t *due, int64_t *at, uint8_t *prio,
                        uint64_t *rec_bytes);
/* Whether any of the "\n"-terminated lines (len bytes) is a canonical UUID held by the
 * index (au_idx_build over 16-byte ids): its line number, else -1. */
int64_t au_idx_find_any_uuid(const uint8_t *ids, const uint32_t *table, uint64_t mask,
                             const char *lines, size_t len);

/* ---- the id index of a snapshot's base jobs (native/idindex.c) ---- */
/* Fill `table` (mask + 1 u32 slots, a power of two >= 2n, then mask + 1 tag bytes: 5 x
 * (mask + 1) bytes in all) with the ranks of the n ids at
 * ids + k * stride (width bytes each). -1: done; k >= 0: id k repeats an earlier one;
 * -2: bad sizes. */
int64_t au_idx_build(const uint8_t *ids, uint64_t n, uint32_t stride, uint32_t width,
                     uint32_t *table, uint64_t mask);
/* The rank of the id `key` (width bytes), or -1. */
int64_t au_idx_find(const uint8_t *ids, uint32_t stride, uint32_t width,
                    const uint32_t *table, uint64_t mask, const uint8_t *key);
/* The 16 bytes of a canonical UUID string (lowercase 8-4-4-4-12 hex): 0, else -1. */
int au_uuid_parse(const char *s, size_t len, uint8_t *out);
/* au_idx_find over 16-byte ids for the canonical UUID string s (-1 if not canonical). */
int64_t au_idx_find_uuid(const uint8_t *ids, const uint32_t *table, uint64_t mask,
                         const char *s, size_t len);

/* ---- the writer: group commit ---- */
typedef struct au_writer au_writer;
/* fdatasync durations: bucket i counts calls that took at most 64 us << i; the last bucket
 * counts the longer ones */
#define AU_SYNC_BUCKETS 17
typedef struct {
    uint64_t fdatasyncs, writes, rounds, batches, records, bytes, rolls;
    uint64_t spares;        /* spare segment files prepared (zero-filled + fsynced) */
    uint64_t spare_rolls;   /* rolls that installed a spare instead of creating a file */
    uint64_t spare_errors;  /* spares that failed (prepare or install); never fatal */
    uint64_t fdatasync_ns;  /* time spent in the writer's fdatasync calls */
    uint64_t fdatasync_hist[17];   /* AU_SYNC_BUCKETS (cffi wants a literal) */
} au_stats;

int au_writer_open(au_writer **out, const char *wal_dir, const char *seg_path,
                   uint64_t seg_first_lsn, uint64_t write_off, uint64_t file_size,
                   uint64_t next_lsn, uint64_t segment_bytes, uint32_t max_record,
                   int mode, uint32_t interval_ms);
/* LSNs are reserved by the caller (one counter, in order) and records are appended with
 * them; ranges may arrive out of order (an early one is parked until the gap fills), so
 * a caller can assign LSNs under its own lock and append after leaving it. A range that
 * is refused, or that never arrives (HOLE_TIMEOUT), fails the writer. `wait` is one of
 * AU_WAIT_*: return at once, once written to the OS, once durable per the mode (fdatasync
 * in sync mode, written otherwise), or once fdatasynced in any mode. */
int au_append_at(au_writer *w, uint64_t first_lsn, uint32_t n, const uint8_t *types,
                 const uint32_t *lens, const uint8_t *data, int wait);
int au_append_at1(au_writer *w, uint64_t lsn, uint8_t type, const uint8_t *payload,
                  uint32_t len, int wait);
/* For callers that keep the GIL (ctypes.PyDLL): never waits on a condition. Appends one
 * record; with `write`, writes it at once on this thread if nobody leads and no segment
 * roll is due. 0: appended (and written, with `write`); AU_QUEUED: appended, not written
 * yet (call au_write_through); AU_AGAIN: the pending buffer is full, nothing appended
 * (call au_append_at1, which waits); < 0 as au_append_at1. */
int au_append_now1(au_writer *w, uint64_t lsn, uint8_t type, const uint8_t *payload,
                   uint32_t len, int write);
int au_wait(au_writer *w, uint64_t lsn, int level);  /* every LSN <= lsn, per AU_WAIT_* */
int au_sync(au_writer *w, uint64_t lsn);            /* au_wait(AU_WAIT_MODE) */
int au_write_through(au_writer *w, uint64_t lsn);   /* au_wait(AU_WAIT_WRITTEN) */
int au_flush(au_writer *w);
int au_writer_close(au_writer *w);
void au_writer_free(au_writer *w);                  /* flush, seal, free; always frees */
int au_writer_failed(au_writer *w);                 /* 0 or the errno that failed it */
void au_writer_set_hole_timeout(au_writer *w, uint32_t ms);  /* default 30 s (tests) */
/* Spare segment files (native/FORMAT.md): writers opened afterwards prepare spares only for
 * segments of at least this many bytes (default 2 MiB; tests set 0). */
void au_set_spare_min_bytes(uint64_t bytes);
int au_writer_spare_state(au_writer *w);   /* one of AU_SPARE_* */
#define AU_SPARE_OFF    (-1)  /* no spare thread */
#define AU_SPARE_NONE   0     /* no spare, none asked for */
#define AU_SPARE_WANTED 1     /* asked for */
#define AU_SPARE_BUSY   2     /* being prepared */
#define AU_SPARE_READY  3     /* ready for the next roll */
void au_writer_stats(au_writer *w, au_stats *s);
/* The newest segment and how far into it the last successful fdatasync reached. */
void au_writer_durable(au_writer *w, uint64_t *seg_first_lsn, uint64_t *durable_off);
void au_writer_position(au_writer *w, uint64_t *seg_first_lsn, uint64_t *write_off,
                        uint64_t *next_lsn, uint64_t *written_lsn);

/* ---- the shared control page (native/shm.c, docs/MULTIPROCESS.md): cross-process
 * exclusion and group commit. Standalone in phase 1: the writer does not use it yet. ---- */
#define AU_SHM_VERSION     2
#define AU_SHM_BYTES       8192
#define AU_SHM_SLOTS       448   /* waiter slots: (8192 - 1024) / 16 */
#define AU_SHM_POLL_MS     20    /* a waiter checks its leader is alive this often */
#define AU_SHM_OWNER_DIED  3     /* au_shm_lock: locked, but the previous holder died */
#define AU_SHM_BUSY        4     /* au_shm_trylock: held by someone else */
#define AU_SHM_MOVED       5     /* au_shm_append_try: the tail is past expect_lsn */
#define AU_SHM_SLOW        6     /* au_shm_append_try: take the locking path (nothing done) */
#define AU_E_SHM_CORRUPT   (-10005)  /* invalid page while other processes are attached */
#define AU_E_SHM_FORKED    (-10006)  /* handle used in a child of the process that opened it */

typedef struct au_shm au_shm;
typedef struct {
    uint64_t generation, write_end, writing_end, synced_end;
    uint64_t appends, fdatasyncs, covered, wakeups, owner_died, leader_died, timeouts;
    uint64_t slot_reclaims, waiting;
    int32_t failed;
    uint32_t leader_pid;
    uint32_t standby_pid;   /* the waiter blocked on the sync lock (0 = none) */
    uint32_t pad_;
} au_shm_stats;

/* Map (creating it 0600 if missing) the page file at `path`. The first process to attach
 * rebuilds it from `log_end` (the end of valid data its scan of the log found) after one
 * fdatasync of `log_fd`; later ones validate it (AU_E_SHM_CORRUPT if invalid). */
int au_shm_open(au_shm **out, const char *path, int log_fd, uint64_t log_end);
/* au_shm_open in two steps (the log is recovered in between, by a process that is alone) */
int au_shm_attach_begin(au_shm **out, const char *path, int *alone);
int au_shm_attach_end(au_shm *h, int log_fd, uint64_t log_end, uint64_t next_lsn);
void au_shm_attach_abort(au_shm *h);
void au_shm_close(au_shm *h);
void au_shm_detach(au_shm *h);   /* release the page's flock; the mapping stays until close */
int au_shm_rebuilt(au_shm *h);                 /* 1 if this open rebuilt the page */
void au_shm_set_poll_ms(au_shm *h, uint32_t ms);
/* The append lock: 0, AU_SHM_OWNER_DIED (locked; the last holder died, its unpublished
 * bytes [write_end, writing_end) are repaired by the next au_shm_append), or < 0. */
int au_shm_lock(au_shm *h);
void au_shm_unlock(au_shm *h);
/* The same lock for a caller holding a GIL: au_shm_trylock never blocks (call it with the
 * GIL kept: ctypes.PyDLL); when busy, drop the GIL in au_shm_wait_unlock(seen = the
 * au_shm_unlock_seq read before the trylock, ms = the poll that notices a dead holder),
 * take the GIL back and try again. Nobody then holds the lock while waiting for a GIL. */
int au_shm_trylock(au_shm *h);       /* 0, AU_SHM_OWNER_DIED, AU_SHM_BUSY, or < 0 */
uint32_t au_shm_unlock_seq(au_shm *h);
int au_shm_wait_unlock(au_shm *h, uint32_t seen, uint32_t ms);   /* 0, -ETIMEDOUT, < 0 */
int au_shm_reserve(au_shm *h, uint32_t len, uint64_t *off);  /* under the lock */
void au_shm_publish(au_shm *h, uint64_t end);                 /* under the lock */
int au_shm_set_tail(au_shm *h, uint64_t write_end);  /* under the lock: rebuild from the log */
/* Under the lock: repair a dead holder's tail if needed, write `buf` at the shared tail of
 * `fd`, publish; *end = its end offset. (Callable keeping the GIL: no waits.) */
int au_shm_write_locked(au_shm *h, int fd, const uint8_t *buf, uint32_t len, uint64_t *end);
/* lock, au_shm_write_locked, unlock */
int au_shm_append(au_shm *h, int fd, const uint8_t *buf, uint32_t len, uint64_t *end);
/* return once every byte below `end` is fdatasynced, by us (leader) or another process */
int au_shm_wait_synced(au_shm *h, int fd, uint64_t end);
int au_shm_commit(au_shm *h, int fd, const uint8_t *buf, uint32_t len, uint64_t *end);
void au_shm_info(au_shm *h, au_shm_stats *s);
/* the log's shared mode: positions are seg_first_lsn << 32 | offset (aurora_log/local/log.py) */
void au_shm_position(au_shm *h, uint64_t *write_end, uint64_t *writing_end,
                     uint64_t *next_lsn, uint64_t *synced_end);
int au_shm_failed(au_shm *h);
void au_shm_set_failed(au_shm *h, int err);
uint32_t au_shm_append_seq(au_shm *h);
int au_shm_wait_append(au_shm *h, uint32_t seen, uint32_t ms);
void au_shm_set_writing(au_shm *h, uint64_t writing_end);
int au_shm_zero_tail(au_shm *h, int fd);
int au_shm_write_batch(au_shm *h, int fd, uint64_t first_lsn, uint32_t n, const uint8_t *types,
                       const uint32_t *lens, const uint8_t *data, uint64_t durable_off,
                       uint64_t *end);
/* The fast path: trylock, checks, one batch, publish, unlock; never blocks (a caller may
 * keep its GIL). `fd` is the segment whose first LSN is `seg_first`, `seg_size` bytes,
 * opened when the page's roll_seq was `roll_seq`; expect_lsn 0 = any tail, else append
 * only if next_lsn == expect_lsn. 0 (written: out[0] = first LSN, out[1] = the position
 * after the batch), AU_SHM_BUSY, AU_SHM_MOVED, AU_SHM_SLOW (nothing done: take the locking
 * path), or < 0 (the write failed; nothing published). _try1: one record. */
#define AU_SHM_MAX_LSN     0xffffffffULL   /* positions keep a segment's first LSN in 32 bits */
int au_shm_append_try(au_shm *h, int fd, uint64_t seg_first, uint64_t seg_size,
                      uint32_t roll_seq, uint64_t expect_lsn, uint32_t n, const uint8_t *types,
                      const uint32_t *lens, const uint8_t *data, uint64_t *out);
int au_shm_append_try1(au_shm *h, int fd, uint64_t seg_first, uint64_t seg_size,
                       uint32_t roll_seq, uint64_t expect_lsn, uint8_t type,
                       const char *payload, uint32_t len, uint64_t *out);
uint64_t au_shm_next_lsn(au_shm *h);      /* hints outside append_mu, exact under it */
uint64_t au_shm_write_end(au_shm *h);
uint64_t au_shm_synced_end(au_shm *h);
uint64_t au_shm_writing_end(au_shm *h);
int au_shm_roll_begin(au_shm *h);
void au_shm_roll_end(au_shm *h, uint64_t pos);
uint32_t au_shm_roll_seq(au_shm *h);
void au_shm_roll_abort(au_shm *h);
int au_shm_test_hold_sync(au_shm *h);          /* tests: take the sync lock and keep it */
int au_shm_test_finish_sync(au_shm *h, int fd, uint64_t target);  /* tests: then finish */

#endif
