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

/* ---- the syscall table (see ausys.h) ---- */
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
void au_segment_header_make(uint8_t *hdr32, uint64_t first_lsn, uint64_t size);
int au_segment_header_check(const uint8_t *hdr, size_t n, uint64_t *first_lsn,
                            uint64_t *size); /* reason */
int au_segment_create(const char *wal_dir, uint64_t first_lsn, uint64_t size);
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
int64_t au_find_durable_evidence(const uint8_t *buf, uint64_t limit, uint64_t x);

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
int au_writer_spare_state(au_writer *w);   /* -1 no spare thread, 0 none, 1 asked for,
                                              2 being prepared, 3 ready */
void au_writer_stats(au_writer *w, au_stats *s);
/* The newest segment and how far into it the last successful fdatasync reached. */
void au_writer_durable(au_writer *w, uint64_t *seg_first_lsn, uint64_t *durable_off);
void au_writer_position(au_writer *w, uint64_t *seg_first_lsn, uint64_t *write_off,
                        uint64_t *next_lsn, uint64_t *written_lsn);

#endif
