/* The segment the writer appends to: positioned writes, fdatasync, batches split at
 * segment ends, and the roll into the next segment (spare or created inline). */
#include "aurora.h"
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Write n bytes at write_off of the active segment; write_off advances only when all of
 * them were written. The leader only (or close, after the joins); no mutex. On -errno the
 * bytes past write_off may be partly written: a torn tail, which the caller fails the
 * writer over and recovery cuts. */
int wr_write_at(au_writer *w, const uint8_t *buf, size_t n)
{
    int64_t r = au_pwrite_full(w->fd, buf, n, (int64_t)w->write_off);
    w->st.writes++;
    if (r < 0)
        return (int)r;
    w->write_off += n;
    return 0;
}

/* Monotonic nanoseconds, for the fdatasync timings. Pure. */
uint64_t wr_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

_Static_assert(sizeof(((au_stats *)0)->fdatasync_hist) == AU_SYNC_BUCKETS * sizeof(uint64_t),
               "au_stats.fdatasync_hist must have AU_SYNC_BUCKETS entries");

/* Count one fdatasync and its duration in w->st (the stats the dashboard's metrics export).
 * Called by whoever ran the fdatasync: the sync stage with the mutex held, a roll or close
 * as the only writer, so the counters have one writer at a time (readers of au_writer_stats
 * may see a round half counted, as for the other counters). */
void wr_count_sync(au_writer *w, uint64_t started_ns)
{
    uint64_t ns = wr_now_ns() - started_ns;
    int b = 0;
    while (b < AU_SYNC_BUCKETS - 1 && ns > ((uint64_t)64000 << b))
        b++;
    w->st.fdatasyncs++;
    w->st.fdatasync_ns += ns;
    w->st.fdatasync_hist[b]++;
}

/* fdatasync the active segment; on success durable_off = write_off. Only where no sync
 * stage can run (a roll, after pub_fd = -1; close, after the joins), since it stores
 * durable_off without the atomic. A failure is returned, never retried: the caller fails
 * the writer. */
int wr_datasync(au_writer *w)
{
    uint64_t t0 = wr_now_ns();
    int r = au_fdatasync(w->fd);
    wr_count_sync(w, t0);
    if (r < 0)
        return r;
    w->durable_off = w->write_off;
    return 0;
}

/* The size au_segment_create gives a segment asked for `size` bytes (at least two
 * headers, a multiple of 8): a spare serves a roll only when this matches its size. */
uint64_t wr_seg_size_norm(uint64_t size)
{
    if (size < 2 * AU_SEG_HDR)
        size = 2 * AU_SEG_HDR;
    return (size + 7) & ~(uint64_t)7;   /* as au_segment_create */
}

/* Roll into the spare if one of the right size is ready (waiting on `cv` for one asked for
 * or being prepared: never slower than starting a second zero-fill beside it; the spare
 * thread broadcasts when done). Called by the leader, mutex held only around the spare's
 * state and counters. 0 with *fd >= 0: the segment is in place (header, fsync, rename,
 * directory fsync done); 0 with *fd < 0: no spare, create the segment as usual (a spare that
 * failed before its rename was closed and unlinked: it never fails the writer); < 0: the
 * rename was done but the directory fsync failed (the writer fails, as with
 * au_segment_create). */
static int take_spare(au_writer *w, uint64_t lsn, uint64_t size, int *fd)
{
    *fd = -1;
    if (!w->sp_started)
        return 0;
    int sfd = -1;
    pthread_mutex_lock(&w->mu);
    if (wr_seg_size_norm(size) == w->sp_size) {
        while (w->sp_state == SP_WANTED || w->sp_state == SP_BUSY)
            pthread_cond_wait(&w->cv, &w->mu);
        if (w->sp_state == SP_READY) {
            sfd = w->sp_fd;
            w->sp_fd = -1;
            w->sp_state = SP_NONE;
        }
    }
    pthread_mutex_unlock(&w->mu);
    if (sfd < 0)
        return 0;
    int r = au_spare_install(sfd, w->sp_path, w->wal_dir, lsn, w->sp_size, w->max_record);
    pthread_mutex_lock(&w->mu);
    if (r == 0)
        w->st.spare_rolls++;
    else if (r == AU_SPARE_UNUSED)
        w->st.spare_errors++;
    pthread_mutex_unlock(&w->mu);
    if (r == AU_SPARE_UNUSED) {
        /* nothing was renamed: drop the spare, fall back to au_segment_create */
        au_close(sfd);
        au_unlink(w->sp_path);
        return 0;
    }
    if (r < 0) {
        au_close(sfd);
        return r;
    }
    *fd = sfd;
    return 0;
}

/* Switch to a new segment of `size` bytes starting at `lsn`. The leader only; the mutex is
 * held only to wait and switch pub_fd. First it waits for the sync stage in flight and sets
 * pub_fd = -1, so none uses the old fd until the round publishes the new one; if that sync
 * failed the writer, it stops there (no fdatasync may follow a failed one). Then: fdatasync
 * what is unsynced; the new file from the spare or created (header and zeros fsynced,
 * renamed, directory fsynced) and opened; only then a SEAL|NEXT batch in the old segment (if
 * there is room), fdatasynced, so a durable NEXT always has its successor on disk: open
 * refuses a newest segment that announces one (FORMAT.md, recovery rules). A segment that
 * holds no record (lsn == its first LSN) is replaced instead: the new file is renamed over
 * it and it gets no SEAL. Then close the old fd and reset the position. On -errno the writer
 * fails with the old segment still active; left behind may be a new segment file holding no
 * batch (which recovery reads as an empty newest segment) and a SEAL|NEXT torn or whole. */
static int roll(au_writer *w, uint64_t lsn, uint64_t size)
{
    int r;
    /* the old fd is about to be closed: no sync stage may use it from here on */
    pthread_mutex_lock(&w->mu);
    while (w->syncing)
        pthread_cond_wait(&w->cv, &w->mu);
    w->pub_fd = -1;
    int failed = w->failed;
    pthread_mutex_unlock(&w->mu);
    if (failed)   /* the sync just waited for failed: no fdatasync may follow it (fsyncgate) */
        return -failed;
    if (w->durable_off < w->write_off && (r = wr_datasync(w)))
        return r;
    int fd = -1;
    if ((r = take_spare(w, lsn, size, &fd)))
        return r;
    if (fd < 0) {
        if ((r = au_segment_create(w->wal_dir, lsn, size, w->max_record)))
            return r;
        char path[4096];
        snprintf(path, sizeof path, "%s/%020llu.seg", w->wal_dir, (unsigned long long)lsn);
        fd = au_open(path, O_RDWR | O_CLOEXEC, 0600);
        if (fd < 0)
            return fd;
    }
    if (lsn != w->seg_first && w->write_off + AU_BATCH_HDR <= w->seg_size) {
        uint8_t seal[AU_BATCH_HDR];
        au_batch_header(seal, AU_BATCH_HDR, lsn, 0, AU_FLAG_SEAL | AU_FLAG_NEXT, w->write_off);
        if ((r = wr_write_at(w, seal, sizeof seal)) || (r = wr_datasync(w))) {
            au_close(fd);
            return r;
        }
    }
    au_close(w->fd);
    w->fd = fd;
    w->seg_first = lsn;
    w->seg_size = (size + 7) & ~(uint64_t)7;
    w->write_off = w->durable_off = AU_SEG_HDR;
    w->st.rolls++;
    return 0;
}

/* Write the taken records as one batch or, where they do not fit the segment's room (32
 * bytes always stay free for a SEAL) or AU_MAX_BATCH, as several batches split at
 * append-call boundaries (one call never spans batches), rolling when not even the next
 * call fits (into a segment sized up for a call bigger than segment_bytes). The leader
 * only, mutex not held. Each batch header carries durable_end = durable_off at that
 * moment (read atomically: the sync stage may raise it meanwhile), the proof recovery
 * uses that the bytes before it were fdatasynced. The common case writes t's buffer in
 * place (its header slot is reserved in front), anything else goes through w->stage. On
 * -errno the batches already written stay on disk, complete but unacknowledged. */
int wr_write_records(au_writer *w, pendbuf *t)
{
    size_t done = AU_BATCH_HDR;  /* offset in t->buf of the first unwritten frame */
    uint64_t lsn = t->first_lsn;
    size_t bi = 0;
    while (bi < t->nbnd) {
        uint64_t avail = w->seg_size > w->write_off + AU_BATCH_HDR
                             ? w->seg_size - w->write_off - AU_BATCH_HDR : 0;
        size_t k = t->nbnd;
        for (size_t j = t->nbnd; j-- > bi;) {
            size_t bl = AU_BATCH_HDR + pad8(t->bnd_off[j] - done);
            if (bl <= avail && bl <= AU_MAX_BATCH) {
                k = j;
                break;
            }
        }
        if (k == t->nbnd) {
            uint64_t need = AU_BATCH_HDR + pad8(t->bnd_off[bi] - done);
            uint64_t size = w->segment_bytes;
            if (need + 2 * AU_BATCH_HDR + AU_SEG_HDR > size)
                size = (need + 2 * AU_BATCH_HDR + AU_SEG_HDR + 4095) & ~(uint64_t)4095;
            int r = roll(w, lsn, size);
            if (r)
                return r;
            continue;
        }
        size_t dlen = t->bnd_off[k] - done;
        size_t blen = AU_BATCH_HDR + pad8(dlen);
        uint32_t count = (uint32_t)(t->bnd_lsn[k] - lsn);
        uint8_t *b;
        if (done == AU_BATCH_HDR && k == t->nbnd - 1) {
            b = t->buf; /* the common case: header slot reserved in front, no copy */
        } else {
            if (blen > w->stage_cap) {
                uint8_t *ns = realloc(w->stage, blen);
                if (!ns)
                    return -ENOMEM;
                w->stage = ns;
                w->stage_cap = blen;
            }
            b = w->stage;
            memcpy(b + AU_BATCH_HDR, t->buf + done, dlen);
        }
        memset(b + AU_BATCH_HDR + dlen, 0, blen - AU_BATCH_HDR - dlen);
        au_batch_header(b, (uint32_t)blen, lsn, count, 0,
                        __atomic_load_n(&w->durable_off, __ATOMIC_RELAXED));
        uint64_t before = w->write_off;
        int r = wr_write_at(w, b, blen);
        if (r)
            return r;
        /* zeros ahead of the end of data (FORMAT.md "Preallocation"); a failure is not
         * ours to report: the next batch lands in a hole, as durable after its fdatasync */
        (void)au_fill_ahead(w->fd, before, w->write_off, w->seg_size);
        w->st.batches++;
        w->st.records += count;
        w->st.bytes += blen;
        done = t->bnd_off[k];
        lsn = t->bnd_lsn[k];
        bi = k + 1;
    }
    return 0;
}
