/* Internal helpers shared by the C files (not part of the cffi API). */
#ifndef AURORA_INTERNAL_H
#define AURORA_INTERNAL_H

#include <stdint.h>

#define AU_FORMAT_VERSION 2u      /* written; version 1 segments are still read */

enum {
    AU_R_OK = 0,
    AU_R_SEG_SHORT, AU_R_SEG_MAGIC, AU_R_SEG_CRC, AU_R_SEG_VERSION, AU_R_SEG_SIZE,
    AU_R_SHORT_HEADER, AU_R_HDR_CRC, AU_R_BATCH_LEN, AU_R_BATCH_PAST_EOF, AU_R_FLAGS,
    AU_R_LSN_GAP, AU_R_LSN_BACK, AU_R_REC_TOO_BIG, AU_R_REC_PAST_BATCH, AU_R_REC_TYPE,
    AU_R_REC_CRC, AU_R_REC_LSN, AU_R_PADDING, AU_R_SEAL_RECORDS, AU_R_TRAILING, AU_R_SEG_LIMIT,
};

/* Little-endian stores and loads, byte by byte: every integer on disk is little-endian
 * (FORMAT.md), whatever the host, and no pointer needs to be aligned. */
static inline void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
/* put32 of the low half, then the high half. */
static inline void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)v);
    put32(p + 4, (uint32_t)(v >> 32));
}
/* The inverse of put32. */
static inline uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
/* The inverse of put64. */
static inline uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

uint32_t au_batch_hdr_crc(const uint8_t *h);
void au_batch_header(uint8_t *h, uint32_t len, uint64_t first_lsn, uint32_t count,
                     uint32_t flags, uint64_t durable_end);
uint32_t au_record_crc(uint8_t type, uint64_t lsn, const uint8_t *payload, uint32_t len);
/* copy a payload into its frame and return its record crc (unmasked) in one pass; the
 * scanner keeps au_record_crc, so every scan cross-checks the writer's crcs */
uint32_t au_crc32c_frame_copy(uint8_t *dst, const uint8_t *src, size_t len, uint8_t type,
                              uint64_t lsn);

/* the spare segment file: prepared off the commit path, installed by a roll */
#define AU_SPARE_NAME   "00000000000000000000.seg.tmp"  /* LSN 0: never a segment */
#define AU_SPARE_UNUSED 1
int au_spare_prepare(const char *path, uint64_t size, int *out_fd, const int *cancel);
int au_spare_install(int fd, const char *spare_path, const char *wal_dir, uint64_t first_lsn,
                     uint64_t size, uint32_t max_record);

/* ---- the writer (native/writer*.c): its state and what its files share. Functions
 * named wr_* are the writer's own, shared between its files (not in aurora.h) ---- */
#include "aurora.h"

#include <pthread.h>
#include <stddef.h>
#include <time.h>

#define BACKPRESSURE_BYTES (64u << 20)  /* pending bytes above which append waits */
#define INTERVAL_UNSYNCED  (4u << 20)   /* interval mode: fdatasync early past this */
#define HOLE_TIMEOUT_MS    30000u       /* default: a reserved range this late never comes */
#define SPARE_AT_NUM       1u            /* ask for the spare once the active segment is */
#define SPARE_AT_DEN       4u            /* ... this full (1/4: 48 MiB of head start) */
#define SPARE_MIN_DEFAULT  (2u << 20)    /* smaller segments: a zero-fill costs ~nothing */

/* The spare file's state (au_writer_spare_state reports it): a round moves NONE -> WANTED,
 * the spare thread WANTED -> BUSY -> READY (or back to NONE on failure), a roll READY ->
 * NONE. */
enum { SP_NONE = AU_SPARE_NONE, SP_WANTED = AU_SPARE_WANTED, SP_BUSY = AU_SPARE_BUSY,
       SP_READY = AU_SPARE_READY };

/* Records framed but not yet taken by a write stage. Two of them swap in a round (pend,
 * spare), so appends go on while the leader writes the other one. */
typedef struct {
    uint8_t *buf;       /* AU_BATCH_HDR reserved bytes, then frames, then room for padding */
    size_t len, cap;    /* len counts from buf (so starts at AU_BATCH_HDR) */
    uint64_t first_lsn;
    uint32_t count;
    size_t *bnd_off;    /* per append call: end offset (from buf) ... */
    uint64_t *bnd_lsn;  /* ... and the LSN after it */
    size_t nbnd, capbnd;
} pendbuf;

/* One writer. Who may touch what: fields set at open and never changed (mode, interval_ms,
 * max_record, segment_bytes, wal_dir, sp_size, sp_path, sp_started) are read freely; the
 * leader-owned block only by the thread that set `leader` (or by open and close when no
 * other thread runs); everything else under `mu`. The threads sleep on: `cv` (the end of a
 * round or of a spare attempt; backpressure, close, rolls and au_writer_durable wait
 * there), `bgcv` (the background thread), `spcv` (the spare thread) and each committer's
 * own condition variable (struct waiter, writer_commit.c). */
struct au_writer {
    pthread_mutex_t mu;
    pthread_cond_t cv;     /* round finished */
    pthread_cond_t bgcv;   /* wake the background thread */
    pthread_t bg;
    int bg_started, stop, closed, leader;
    int syncing;           /* a sync stage is in its fdatasync (mutex dropped) */
    int failed;            /* errno that failed the writer, 0 if healthy */
    int mode;
    uint32_t interval_ms, max_record;
    uint64_t segment_bytes;
    char *wal_dir;

    /* leader-owned (changed only inside a write stage). durable_off: the sync stage
     * raises it too (under the mutex, atomically: the write stage reads it for batch
     * headers without the mutex; a roll changes it only while no sync runs) */
    int fd;
    uint64_t seg_first, seg_size, write_off, durable_off;
    uint8_t *stage;
    size_t stage_cap;

    /* mutex-protected */
    pendbuf pend, spare;
    struct parked *parked; /* reserved ranges that arrived early, by first LSN */
    struct waiter *waiters; /* committers asleep until a round covers their LSN */
    uint32_t nwant_sync;   /* ... of which this many want an fdatasync */
    int kick;              /* the background thread should run a round now */
    uint32_t hole_ms;      /* give up on a reserved range not arrived after this long */
    uint64_t next_lsn;     /* next LSN to assign */
    uint64_t written_lsn;  /* every LSN < this is written */
    uint64_t synced_lsn;   /* every LSN < this is fdatasynced */
    uint64_t pub_seg_first, pub_write_off;  /* the leader's position after its last round */
    int pub_fd;            /* the fd a sync stage may flush; -1 while a roll switches */
    au_stats st;           /* the write stage bumps its own counters without the mutex */

    /* the spare segment file (mutex-protected; the spare thread owns sp_fd while BUSY) */
    pthread_t sp_thread;
    pthread_cond_t spcv;   /* wake the spare thread */
    int sp_started, sp_state, sp_fd, sp_cancel, sp_errno;
    uint64_t sp_size;      /* the size every spare gets: segment_bytes, normalized */
    uint64_t sp_fail_seg;  /* a spare failed while this segment was active: no retry yet */
    char *sp_path;
};

/* A reserved range that arrived before the ranges in front of it: a private copy. */
struct parked {
    struct parked *next;
    uint64_t first_lsn;
    uint32_t n;
    size_t total;      /* framed bytes */
    uint32_t *lens;    /* n lengths, then n types (as uint8_t), then the data */
};

/* Batches are 8-aligned: a batch of n bytes of frames takes pad8(n) after its header. */
static inline size_t pad8(size_t n) { return (n + 7) & ~(size_t)7; }

/* writer_append.c */
void wr_pend_reset(pendbuf *p);
void wr_pend_free(pendbuf *p);
/* writer_commit.c */
void wr_wake_covered(au_writer *w);
void wr_fail_locked(au_writer *w, int err);
void wr_kick_if_waited(au_writer *w);
void wr_leader_round(au_writer *w, int do_sync);
/* writer_segment.c */
int wr_write_at(au_writer *w, const uint8_t *buf, size_t n);
int wr_datasync(au_writer *w);
uint64_t wr_now_ns(void);
void wr_count_sync(au_writer *w, uint64_t started_ns);
uint64_t wr_seg_size_norm(uint64_t size);
int wr_write_records(au_writer *w, pendbuf *t);
/* writer_threads.c */
void wr_deadline_after(struct timespec *ts, uint32_t ms);
void *wr_bg_main(void *arg);
void *wr_spare_main(void *arg);

#endif
