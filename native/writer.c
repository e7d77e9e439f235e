/* The segment writer with group commit (leader/follower).
 *
 * append() frames records into `pend` under the mutex and assigns LSNs; it never does I/O.
 * A committer that finds its LSN not yet covered and no leader active becomes the leader:
 * it takes the whole pending buffer, drops the mutex, does one write (per batch), re-locks,
 * advances written_lsn and wakes the waiters that only needed the write. Then, if it asked
 * for one, the sync stage: one fdatasync with the mutex dropped, after which synced_lsn
 * covers what was written when it began. The two stages overlap: once the write stage is
 * over the next leader may write while the fdatasync runs, so a claim (which needs only
 * the write) never waits behind a disk flush. Only one fdatasync runs at a time; one that
 * would start while another runs is left to the end of that one (it kicks the next round).
 * The write stage owns the file position and segment rolls; a roll waits for the sync in
 * flight and keeps a new one from starting (pub_fd = -1) until the new segment is in use.
 * A background thread runs rounds for the interval/os modes and for records nobody waits
 * for. Any I/O error fails the writer for good: waiters not yet covered, and every later
 * call, get AU_E_FAILED (the errno is kept); fsync is never retried.
 *
 * Segment rolls: creating a segment zero-fills and fsyncs it (64 MiB: 100+ ms, a stall for
 * every committer of that round). So a third thread, the spare thread, prepares the next
 * file ahead of time: when the active segment is SPARE_AT_NUM/SPARE_AT_DEN full, it zero-
 * fills and fsyncs <wal>/00000000000000000000.seg.tmp (a name recovery deletes as a leftover
 * .tmp; LSN 0 is never a segment) and keeps its fd. A roll then only writes the real
 * header, fsyncs, renames and fsyncs the directory. Anything wrong with the spare (not
 * asked for yet, failed, another size) and the roll creates the segment as before; a
 * failed spare never fails the writer.
 *
 * The files: writer.c (this one) opens, closes and frees a writer and answers the
 * accessors; writer_append.c frames records into the pending buffer and parks ranges that
 * arrive early; writer_commit.c holds the waiters, the leader round (write stage, sync
 * stage) and commit(); writer_segment.c writes batches, fdatasyncs and rolls segments;
 * writer_threads.c runs the background thread and the spare thread. struct au_writer, with
 * who may touch which field, is in internal.h. */
#include "aurora.h"
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* segments of at least this many bytes get a spare (tests lower it) */
static uint64_t spare_min_bytes = SPARE_MIN_DEFAULT;

/* Process-wide, read once by each au_writer_open: writers already open keep their choice.
 * Atomic, so tests may call it while other writers open. */
void au_set_spare_min_bytes(uint64_t bytes)
{
    __atomic_store_n(&spare_min_bytes, bytes, __ATOMIC_RELAXED);
}

/* For tests: the spare thread's state (SP_*), or AU_SPARE_OFF when no spare thread runs.
 * Read under the mutex, so it is a state the writer really was in. */
int au_writer_spare_state(au_writer *w)
{
    pthread_mutex_lock(&w->mu);
    int s = w->sp_started ? w->sp_state : AU_SPARE_OFF;
    pthread_mutex_unlock(&w->mu);
    return s;
}

/* Opens a writer that appends to seg_path (whose valid data ends at write_off, as recovery
 * found it) and starts its threads. Arguments are checked before anything is touched
 * (AU_E_INVAL). On 0: the segment was fdatasynced first, because its bytes may come from a
 * process killed before it synced them, so durable_off = write_off and written_lsn =
 * synced_lsn = next_lsn hold from the start; the background thread runs; the spare thread
 * runs only for segments of at least spare_min_bytes and only if it could start (without
 * it every roll creates its segment inline). The sp_* fields are set after the background
 * thread starts: it touches none of them before a first append, and none can come before
 * *out is set. Any failure (open, fdatasync, memory, background thread) returns with *out
 * NULL, the fd closed and nothing allocated; on disk only the fdatasync happened. One
 * writer per directory is the caller's lock (log.py's flock), not checked here. */
int au_writer_open(au_writer **out, const char *wal_dir, const char *seg_path,
                   uint64_t seg_first_lsn, uint64_t write_off, uint64_t file_size,
                   uint64_t next_lsn, uint64_t segment_bytes, uint32_t max_record, int mode,
                   uint32_t interval_ms)
{
    *out = NULL;
    if (mode < AU_MODE_SYNC || mode > AU_MODE_OS || write_off < AU_SEG_HDR ||
        write_off > file_size || (write_off & 7) || next_lsn == 0)
        return AU_E_INVAL;
    au_writer *w = calloc(1, sizeof *w);
    if (!w)
        return -ENOMEM;
    w->wal_dir = strdup(wal_dir);
    if (!w->wal_dir) {
        free(w);
        return -ENOMEM;
    }
    int fd = au_open(seg_path, O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0) {
        free(w->wal_dir);
        free(w);
        return fd;
    }
    /* the bytes may come from a process that was killed before syncing them */
    int r = au_fdatasync(fd);
    if (r < 0) {
        au_close(fd);
        free(w->wal_dir);
        free(w);
        return r;
    }
    w->fd = w->pub_fd = fd;
    w->mode = mode;
    w->interval_ms = interval_ms;
    w->hole_ms = HOLE_TIMEOUT_MS;
    w->max_record = max_record;
    w->segment_bytes = segment_bytes;
    w->seg_first = w->pub_seg_first = seg_first_lsn;
    w->seg_size = file_size & ~(uint64_t)7;
    w->write_off = w->durable_off = w->pub_write_off = write_off;
    w->next_lsn = w->written_lsn = w->synced_lsn = next_lsn;
    wr_pend_reset(&w->pend);
    wr_pend_reset(&w->spare);

    pthread_mutex_init(&w->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv, &ca);
    pthread_cond_init(&w->bgcv, &ca);
    pthread_cond_init(&w->spcv, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&w->bg, NULL, wr_bg_main, w) == 0)
        w->bg_started = 1;
    else {
        au_close(fd);
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv);
        pthread_cond_destroy(&w->bgcv);
        pthread_cond_destroy(&w->spcv);
        free(w->wal_dir);
        free(w);
        return -EAGAIN;
    }
    /* the spare thread: optional (without it every roll creates its segment inline) */
    w->sp_fd = -1;
    w->sp_size = wr_seg_size_norm(segment_bytes);
    uint64_t min = __atomic_load_n(&spare_min_bytes, __ATOMIC_RELAXED);
    size_t plen = strlen(wal_dir) + sizeof "/" AU_SPARE_NAME;
    if (w->sp_size >= min && w->sp_size / 8 <= UINT32_MAX && (w->sp_path = malloc(plen))) {
        snprintf(w->sp_path, plen, "%s/%s", wal_dir, AU_SPARE_NAME);
        if (pthread_create(&w->sp_thread, NULL, wr_spare_main, w) == 0)
            w->sp_started = 1;
    }
    *out = w;
    return 0;
}

/* For tests: how long a committer waits for a reserved range before failing the writer
 * (0 means 1 ms). Under the mutex; a waiter already asleep uses it from its next deadline. */
void au_writer_set_hole_timeout(au_writer *w, uint32_t ms)
{
    pthread_mutex_lock(&w->mu);
    w->hole_ms = ms ? ms : 1;
    pthread_mutex_unlock(&w->mu);
}

/* The errno that failed the writer (the first failure wins and is never cleared), or 0. */
int au_writer_failed(au_writer *w)
{
    pthread_mutex_lock(&w->mu);
    int f = w->failed;
    pthread_mutex_unlock(&w->mu);
    return f;
}

/* A copy of the counters taken under the mutex. The write stage bumps its own counters
 * (writes, batches, records, bytes, rolls, its fdatasyncs) without the mutex, so a copy
 * taken during a round may lag that round; every counter only grows. */
void au_writer_stats(au_writer *w, au_stats *s)
{
    pthread_mutex_lock(&w->mu);
    *s = w->st;
    pthread_mutex_unlock(&w->mu);
}

/* The position as of the last finished write stage (the pub_* copies, never the leader's
 * live fields), with next_lsn and written_lsn, all read in one mutex hold. Never waits. */
void au_writer_position(au_writer *w, uint64_t *seg_first_lsn, uint64_t *write_off,
                        uint64_t *next_lsn, uint64_t *written_lsn)
{
    pthread_mutex_lock(&w->mu);
    *seg_first_lsn = w->pub_seg_first;
    *write_off = w->pub_write_off;
    *next_lsn = w->next_lsn;
    *written_lsn = w->written_lsn;
    pthread_mutex_unlock(&w->mu);
}

/* The newest segment and how far into it the last successful fdatasync reached. Both are
 * leader-owned, so this waits on `cv` until no round and no sync stage runs: the pair is
 * then consistent (never a durable_off of one segment with the first LSN of the next). */
void au_writer_durable(au_writer *w, uint64_t *seg_first_lsn, uint64_t *durable_off)
{
    pthread_mutex_lock(&w->mu);
    while (w->leader || w->syncing)   /* read them between rounds */
        pthread_cond_wait(&w->cv, &w->mu);
    *seg_first_lsn = w->seg_first;
    *durable_off = w->durable_off;
    pthread_mutex_unlock(&w->mu);
}

/* Flush, stop the threads, SEAL, close the fd. The flush makes every framed LSN
 * fdatasynced; closed and stop are set only once no round and no sync stage runs, and
 * after the joins this thread alone owns the fd and every field. Waiters still asleep
 * and every later call get AU_E_CLOSED. The SEAL batch is written and fdatasynced only
 * when the flush succeeded, the writer is healthy and the segment has room: without it,
 * recovery treats the tail as possibly torn. An unused spare file is unlinked (no
 * directory fsync: a resurrected .tmp is deleted at the next open). Returns 0, or -errno:
 * the one that failed the writer, the SEAL's, or close's. A second call returns 0. The
 * caller stops appending and closing from other threads first (log.py does, under its
 * state lock): a range appended after the flush would not be written. */
int au_writer_close(au_writer *w)
{
    pthread_mutex_lock(&w->mu);
    int already = w->closed;
    pthread_mutex_unlock(&w->mu);
    if (already)
        return 0;
    int rc = au_flush(w);
    pthread_mutex_lock(&w->mu);
    while (w->leader || w->syncing)
        pthread_cond_wait(&w->cv, &w->mu);
    w->closed = 1;
    w->stop = 1;
    wr_wake_covered(w);
    pthread_cond_broadcast(&w->bgcv);
    pthread_cond_broadcast(&w->cv);
    __atomic_store_n(&w->sp_cancel, 1, __ATOMIC_RELAXED);
    pthread_cond_broadcast(&w->spcv);
    pthread_mutex_unlock(&w->mu);
    if (w->bg_started)
        pthread_join(w->bg, NULL);
    if (w->sp_started)
        pthread_join(w->sp_thread, NULL);
    /* no other thread does I/O now. An unused spare is removed (no directory fsync: if a
     * crash brings it back, the next open deletes it like any leftover .tmp) */
    if (w->sp_fd >= 0) {
        au_close(w->sp_fd);
        au_unlink(w->sp_path);
        w->sp_fd = -1;
        w->sp_state = SP_NONE;
    }
    if (rc == 0 && !w->failed && w->write_off + AU_BATCH_HDR <= w->seg_size) {
        /* SEAL: everything before it is complete and was fdatasynced (durable_end = its
         * own offset), so damage to the last batch is told apart from a torn tail */
        uint8_t seal[AU_BATCH_HDR];
        au_batch_header(seal, AU_BATCH_HDR, w->next_lsn, 0, AU_FLAG_SEAL, w->durable_off);
        int r = wr_write_at(w, seal, sizeof seal);
        if (!r)
            r = wr_datasync(w);
        if (r) {
            /* as on the commit path: a failed write/fdatasync fails the writer, so the
             * caller leaves the .unsynced marker (fsyncgate, FORMAT.md rule 3) */
            rc = r;
            pthread_mutex_lock(&w->mu);
            if (!w->failed)
                w->failed = -r;
            pthread_mutex_unlock(&w->mu);
        }
    }
    if (rc == AU_E_FAILED || (rc == 0 && w->failed))
        rc = -(w->failed ? w->failed : EIO);
    int c = au_close(w->fd);
    w->fd = -1;
    if (!rc && c < 0)
        rc = c;
    return rc;
}

/* Frees the writer; after au_writer_close() and once no thread can still call into it
 * (the Python side ties this to the lifetime of its pointer object). Closes it first if
 * needed (the result is lost: a caller that cares closes first). Parked ranges that never
 * became next in line are freed unwritten. */
void au_writer_free(au_writer *w)
{
    if (!w)
        return;
    if (!w->closed)
        au_writer_close(w);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    pthread_cond_destroy(&w->bgcv);
    pthread_cond_destroy(&w->spcv);
    wr_pend_free(&w->pend);
    wr_pend_free(&w->spare);
    while (w->parked) {
        struct parked *pk = w->parked;
        w->parked = pk->next;
        free(pk);
    }
    free(w->stage);
    free(w->sp_path);
    free(w->wal_dir);
    free(w);
}
