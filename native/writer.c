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
 * failed spare never fails the writer. */
#include "aurora.h"
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BACKPRESSURE_BYTES (64u << 20)  /* pending bytes above which append waits */
#define INTERVAL_UNSYNCED  (4u << 20)   /* interval mode: fdatasync early past this */
#define HOLE_TIMEOUT_MS    30000u       /* default: a reserved range this late never comes */
#define SPARE_AT_NUM       1u            /* ask for the spare once the active segment is */
#define SPARE_AT_DEN       4u            /* ... this full (1/4: 48 MiB of head start) */
#define SPARE_MIN_DEFAULT  (2u << 20)    /* smaller segments: a zero-fill costs ~nothing */

enum { SP_NONE, SP_WANTED, SP_BUSY, SP_READY };

/* segments of at least this many bytes get a spare (tests lower it) */
static uint64_t spare_min_bytes = SPARE_MIN_DEFAULT;

typedef struct {
    uint8_t *buf;       /* AU_BATCH_HDR reserved bytes, then frames, then room for padding */
    size_t len, cap;    /* len counts from buf (so starts at AU_BATCH_HDR) */
    uint64_t first_lsn;
    uint32_t count;
    size_t *bnd_off;    /* per append call: end offset (from buf) ... */
    uint64_t *bnd_lsn;  /* ... and the LSN after it */
    size_t nbnd, capbnd;
} pendbuf;

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
    uint64_t pub_seg_first, pub_write_off;
    int pub_fd;            /* the fd a sync stage may flush; -1 while a roll switches */
    au_stats st;

    /* the spare segment file (mutex-protected; the spare thread owns sp_fd while BUSY) */
    pthread_t sp_thread;
    pthread_cond_t spcv;   /* wake the spare thread */
    int sp_started, sp_state, sp_fd, sp_cancel, sp_errno;
    uint64_t sp_size;      /* the size every spare gets: segment_bytes, normalized */
    uint64_t sp_fail_seg;  /* a spare failed while this segment was active: no retry yet */
    char *sp_path;
};

static int pend_reserve(pendbuf *p, size_t extra)
{
    size_t need = p->len + extra + 8;
    if (need > p->cap) {
        size_t nc = p->cap ? p->cap : 65536;
        while (nc < need)
            nc *= 2;
        uint8_t *nb = realloc(p->buf, nc);
        if (!nb)
            return -ENOMEM;
        p->buf = nb;
        p->cap = nc;
    }
    if (p->nbnd == p->capbnd) {
        size_t nc = p->capbnd ? p->capbnd * 2 : 64;
        size_t *no = realloc(p->bnd_off, nc * sizeof *no);
        if (!no)
            return -ENOMEM;
        p->bnd_off = no;
        uint64_t *nl = realloc(p->bnd_lsn, nc * sizeof *nl);
        if (!nl)
            return -ENOMEM;
        p->bnd_lsn = nl;
        p->capbnd = nc;
    }
    return 0;
}

static void pend_reset(pendbuf *p)
{
    p->len = AU_BATCH_HDR;
    p->count = 0;
    p->nbnd = 0;
    p->first_lsn = 0;
}

static void pend_free(pendbuf *p)
{
    free(p->buf);
    free(p->bnd_off);
    free(p->bnd_lsn);
}

static size_t pad8(size_t n) { return (n + 7) & ~(size_t)7; }

static int write_at(au_writer *w, const uint8_t *buf, size_t n)
{
    int64_t r = au_pwrite_full(w->fd, buf, n, (int64_t)w->write_off);
    w->st.writes++;
    if (r < 0)
        return (int)r;
    w->write_off += n;
    return 0;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

_Static_assert(sizeof(((au_stats *)0)->fdatasync_hist) == AU_SYNC_BUCKETS * sizeof(uint64_t),
               "au_stats.fdatasync_hist must have AU_SYNC_BUCKETS entries");

/* count one fdatasync and its duration (the stats the dashboard's metrics export) */
static void count_sync(au_writer *w, uint64_t started_ns)
{
    uint64_t ns = now_ns() - started_ns;
    int b = 0;
    while (b < AU_SYNC_BUCKETS - 1 && ns > ((uint64_t)64000 << b))
        b++;
    w->st.fdatasyncs++;
    w->st.fdatasync_ns += ns;
    w->st.fdatasync_hist[b]++;
}

static int datasync(au_writer *w)
{
    uint64_t t0 = now_ns();
    int r = au_fdatasync(w->fd);
    count_sync(w, t0);
    if (r < 0)
        return r;
    w->durable_off = w->write_off;
    return 0;
}

static uint64_t seg_size_norm(uint64_t size)
{
    if (size < 2 * AU_SEG_HDR)
        size = 2 * AU_SEG_HDR;
    return (size + 7) & ~(uint64_t)7;   /* as au_segment_create */
}

/* Roll into the spare if one of the right size is ready (waiting for one asked for or
 * being prepared: never slower than starting a second zero-fill beside it).
 * 0 with *fd >= 0: the segment is in place (header, fsync, rename, directory fsync done);
 * 0 with *fd < 0: no spare, create the segment as usual; < 0: the rename was done but the
 * directory fsync failed (the writer fails). Called by the leader, mutex not held. */
static int take_spare(au_writer *w, uint64_t lsn, uint64_t size, int *fd)
{
    *fd = -1;
    if (!w->sp_started)
        return 0;
    int sfd = -1;
    pthread_mutex_lock(&w->mu);
    if (seg_size_norm(size) == w->sp_size) {
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
    int r = au_spare_install(sfd, w->sp_path, w->wal_dir, lsn, w->sp_size);
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

/* Seal the current segment and switch to a new one of `size` bytes starting at `lsn`. */
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
    if (w->durable_off < w->write_off && (r = datasync(w)))
        return r;
    if (w->write_off + AU_BATCH_HDR <= w->seg_size) {
        uint8_t seal[AU_BATCH_HDR];
        au_batch_header(seal, AU_BATCH_HDR, lsn, 0, AU_FLAG_SEAL, w->write_off);
        if ((r = write_at(w, seal, sizeof seal)) || (r = datasync(w)))
            return r;
    }
    int fd = -1;
    if ((r = take_spare(w, lsn, size, &fd)))
        return r;
    if (fd < 0) {
        if ((r = au_segment_create(w->wal_dir, lsn, size)))
            return r;
        char path[4096];
        snprintf(path, sizeof path, "%s/%020llu.seg", w->wal_dir, (unsigned long long)lsn);
        fd = au_open(path, O_RDWR | O_CLOEXEC, 0600);
        if (fd < 0)
            return fd;
    }
    au_close(w->fd);
    w->fd = fd;
    w->seg_first = lsn;
    w->seg_size = (size + 7) & ~(uint64_t)7;
    w->write_off = w->durable_off = AU_SEG_HDR;
    w->st.rolls++;
    return 0;
}

/* Write the taken records as one batch, or, when they do not fit the segment, as several
 * batches split at append-call boundaries (so one call never spans batches). */
static int write_records(au_writer *w, pendbuf *t)
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
        int r = write_at(w, b, blen);
        if (r)
            return r;
        w->st.batches++;
        w->st.records += count;
        w->st.bytes += blen;
        done = t->bnd_off[k];
        lsn = t->bnd_lsn[k];
        bi = k + 1;
    }
    return 0;
}

/* A committer asleep in commit(): on its own condition variable, so a round wakes only
 * the threads it covered (one broadcast woke all 64 and they fought over the mutex and
 * the GIL while the disk sat idle). Lives on the committer's stack. */
typedef struct waiter {
    struct waiter *next;
    uint64_t lsn;
    int want_synced;
    int done;
    pthread_cond_t cv;
} waiter;

/* Wake and unlink the waiters now covered (all of them once the writer failed). */
static void wake_covered(au_writer *w)
{
    waiter **pp = &w->waiters;
    while (*pp) {
        waiter *x = *pp;
        uint64_t have = x->want_synced ? w->synced_lsn : w->written_lsn;
        if (x->lsn < have || w->failed || w->closed) {
            *pp = x->next;
            x->done = 1;
            if (x->want_synced)
                w->nwant_sync--;
            pthread_cond_signal(&x->cv);
        } else
            pp = &x->next;
    }
}

static void fail_locked(au_writer *w, int err)
{
    if (!w->failed)
        w->failed = err;
    wake_covered(w);
    pthread_cond_broadcast(&w->cv);
}

/* Records someone waits for are pending and nobody leads: the background thread (a C
 * thread: it never needs the GIL) runs the next round. */
static void kick_if_waited(au_writer *w)
{
    if (w->waiters && !w->leader && !w->failed) {
        w->kick = 1;
        pthread_cond_signal(&w->bgcv);
    }
}

/* The sync stage: one fdatasync of what is written, unless one runs already (its end
 * kicks the next round for whoever still waits) or a roll is switching segments. Mutex
 * held; dropped for the fdatasync. */
static void sync_stage(au_writer *w)
{
    if (w->syncing || w->pub_fd < 0 || w->failed || w->synced_lsn >= w->written_lsn)
        return;
    w->syncing = 1;
    int fd = w->pub_fd;
    uint64_t lsn = w->written_lsn, off = w->pub_write_off;
    pthread_mutex_unlock(&w->mu);
    uint64_t t0 = now_ns();
    int r = au_fdatasync(fd);
    pthread_mutex_lock(&w->mu);
    w->syncing = 0;
    count_sync(w, t0);
    if (r < 0) {
        if (!w->failed)
            w->failed = -r;
    } else if (!w->failed) {
        w->synced_lsn = lsn;   /* only the sync stage raises it once a writer is open */
        if (off > w->durable_off)     /* same segment: a roll waits for this stage */
            __atomic_store_n(&w->durable_off, off, __ATOMIC_RELAXED);
    }
}

/* One leader round: the write stage, then (do_sync) the sync stage. Called and returns
 * with the mutex held; drops it for the I/O. */
static void leader_round(au_writer *w, int do_sync)
{
    w->leader = 1;
    pendbuf t = w->pend;
    w->pend = w->spare;
    pend_reset(&w->pend);
    uint64_t end_lsn = w->next_lsn;
    pthread_mutex_unlock(&w->mu);

    int r = 0;
    if (t.count)
        r = write_records(w, &t);

    pthread_mutex_lock(&w->mu);
    pend_reset(&t);
    w->spare = t;
    w->st.rounds++;
    if (r) {
        if (!w->failed)
            w->failed = r < 0 ? -r : EIO;
    } else if (!w->failed) {   /* after a failure nothing more is acknowledged */
        w->written_lsn = end_lsn;
    }
    w->pub_seg_first = w->seg_first;
    w->pub_write_off = w->write_off;
    w->pub_fd = w->fd;
    w->leader = 0;
    if (w->sp_started && w->sp_state == SP_NONE && !w->failed &&
        w->sp_fail_seg != w->seg_first && w->seg_size == w->sp_size &&
        (w->write_off - AU_SEG_HDR) * SPARE_AT_DEN >=
            (w->seg_size - AU_SEG_HDR) * SPARE_AT_NUM) {
        w->sp_state = SP_WANTED;
        pthread_cond_signal(&w->spcv);
    }
    if (do_sync) {
        wake_covered(w);   /* those that needed only the write go before the fdatasync */
        sync_stage(w);
    }
    wake_covered(w);
    kick_if_waited(w);
    if (w->mode == AU_MODE_INTERVAL && w->pub_write_off - w->durable_off > INTERVAL_UNSYNCED)
        pthread_cond_signal(&w->bgcv);
    pthread_cond_broadcast(&w->cv);  /* backpressure, close, rolls, the background thread */
}

static void deadline_after(struct timespec *ts, uint32_t ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static int past(const struct timespec *ts)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > ts->tv_sec || (now.tv_sec == ts->tv_sec && now.tv_nsec >= ts->tv_nsec);
}

static void *bg_main(void *arg)
{
    au_writer *w = arg;
    uint32_t tick_ms = w->interval_ms ? w->interval_ms : 1;
    struct timespec tick;   /* the next timer round: kicks do not push it back */
    deadline_after(&tick, tick_ms);
    pthread_mutex_lock(&w->mu);
    while (!w->stop) {
        if (!w->kick)
            pthread_cond_timedwait(&w->bgcv, &w->mu, &tick);
        int kicked = w->kick;
        w->kick = 0;
        if (w->stop)
            break;
        int timer = !kicked || past(&tick);
        if (timer)
            deadline_after(&tick, tick_ms);
        if (w->failed)
            continue;
        /* kicked: committers wait (an fdatasync only if one of them wants it); timer: the
         * interval mode's fdatasync, and records nobody waits for: in sync mode too, so a
         * record appended without waiting (a durable=False complete that a claim's write
         * already wrote) is fdatasynced within interval_ms even if nothing follows it */
        int want_sync = w->nwant_sync > 0 || (timer && w->mode != AU_MODE_OS);
        int unsynced = want_sync && w->synced_lsn < w->written_lsn && !w->syncing;
        if (!w->pend.count && !unsynced)
            continue;
        while (w->leader && !w->stop)
            pthread_cond_wait(&w->cv, &w->mu);
        if (w->stop || w->failed)
            continue;
        leader_round(w, want_sync || w->nwant_sync > 0);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* The spare thread: prepares the next segment file whenever a round asks for one. */
static void *spare_main(void *arg)
{
    au_writer *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->stop && w->sp_state != SP_WANTED)
            pthread_cond_wait(&w->spcv, &w->mu);
        if (w->stop)
            break;
        w->sp_state = SP_BUSY;
        uint64_t seg = w->pub_seg_first;
        pthread_mutex_unlock(&w->mu);

        int fd = -1;
        int r = au_spare_prepare(w->sp_path, w->sp_size, &fd, &w->sp_cancel);
        if (r) {
            /* a failed fsync of this file says nothing we need about the segments (their
             * own fdatasyncs report their own errors): drop it, never reuse its pages */
            if (fd >= 0)
                au_close(fd);
            au_unlink(w->sp_path);
        }

        pthread_mutex_lock(&w->mu);
        if (!r) {
            w->sp_fd = fd;
            w->sp_state = SP_READY;
            w->st.spares++;
        } else {
            w->sp_state = SP_NONE;
            if (r != -ECANCELED) {
                w->st.spare_errors++;
                w->sp_errno = -r;
                w->sp_fail_seg = seg;   /* try again after the next roll */
            }
        }
        pthread_cond_broadcast(&w->cv);   /* a roll may wait for this spare */
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

void au_set_spare_min_bytes(uint64_t bytes)
{
    __atomic_store_n(&spare_min_bytes, bytes, __ATOMIC_RELAXED);
}

int au_writer_spare_state(au_writer *w)
{
    pthread_mutex_lock(&w->mu);
    int s = w->sp_started ? w->sp_state : -1;
    pthread_mutex_unlock(&w->mu);
    return s;
}

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
    pend_reset(&w->pend);
    pend_reset(&w->spare);

    pthread_mutex_init(&w->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv, &ca);
    pthread_cond_init(&w->bgcv, &ca);
    pthread_cond_init(&w->spcv, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&w->bg, NULL, bg_main, w) == 0)
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
    w->sp_size = seg_size_norm(segment_bytes);
    uint64_t min = __atomic_load_n(&spare_min_bytes, __ATOMIC_RELAXED);
    size_t plen = strlen(wal_dir) + sizeof "/" AU_SPARE_NAME;
    if (w->sp_size >= min && w->sp_size / 8 <= UINT32_MAX && (w->sp_path = malloc(plen))) {
        snprintf(w->sp_path, plen, "%s/%s", wal_dir, AU_SPARE_NAME);
        if (pthread_create(&w->sp_thread, NULL, spare_main, w) == 0)
            w->sp_started = 1;
    }
    *out = w;
    return 0;
}

/* Frame n records at next_lsn into pend. Mutex held; the writer is healthy. */
static int frame_locked(au_writer *w, uint32_t n, const uint8_t *types, const uint32_t *lens,
                        const uint8_t *data, size_t total)
{
    int rc = pend_reserve(&w->pend, total);
    if (rc)
        return rc;
    pendbuf *p = &w->pend;
    if (!p->count)
        p->first_lsn = w->next_lsn;
    uint64_t lsn = w->next_lsn;
    for (uint32_t i = 0; i < n; i++) {
        uint8_t *f = p->buf + p->len;
        put32(f, lens[i]);
        put32(f + 4, au_crc_mask(au_crc32c_frame_copy(f + AU_REC_HDR, data, lens[i],
                                                      types[i], lsn)));
        put64(f + 8, lsn);
        f[16] = types[i];
        data += lens[i];
        p->len += AU_REC_HDR + lens[i];
        lsn++;
    }
    p->count += n;
    p->bnd_off[p->nbnd] = p->len;
    p->bnd_lsn[p->nbnd] = lsn;
    p->nbnd++;
    w->next_lsn = lsn;
    return 0;
}

/* A reserved range that arrived before the ranges in front of it: a private copy. */
struct parked {
    struct parked *next;
    uint64_t first_lsn;
    uint32_t n;
    size_t total;      /* framed bytes */
    uint32_t *lens;    /* n lengths, then n types (as uint8_t), then the data */
};

static int park_locked(au_writer *w, uint64_t first, uint32_t n, const uint8_t *types,
                       const uint32_t *lens, const uint8_t *data, size_t dlen, size_t total)
{
    /* the ranges are disjoint and each is parked once: find the slot, refuse overlaps */
    struct parked **at = &w->parked;
    while (*at && (*at)->first_lsn < first)
        at = &(*at)->next;
    if (*at && (*at)->first_lsn < first + n)
        return AU_E_INVAL;
    struct parked *pk = malloc(sizeof *pk + (size_t)n * 5 + dlen);
    if (!pk)
        return -ENOMEM;
    pk->first_lsn = first;
    pk->n = n;
    pk->total = total;
    pk->lens = (uint32_t *)(pk + 1);
    memcpy(pk->lens, lens, (size_t)n * 4);
    memcpy((uint8_t *)(pk->lens + n), types, n);
    memcpy((uint8_t *)(pk->lens + n) + n, data, dlen);
    pk->next = *at;
    *at = pk;
    return 0;
}

/* Frame the parked ranges that have become next in line. */
static int unpark_locked(au_writer *w)
{
    int moved = 0;
    struct parked *pk;
    /* waiters on these LSNs sleep until a round covers them: append_at kicks one */
    while ((pk = w->parked) && pk->first_lsn == w->next_lsn) {
        const uint8_t *types = (const uint8_t *)(pk->lens + pk->n);
        int rc = frame_locked(w, pk->n, types, pk->lens, types + pk->n, pk->total);
        if (rc)
            return rc;
        w->parked = pk->next;
        free(pk);
        moved = 1;
    }
    (void)moved;
    return 0;
}

static int commit(au_writer *w, uint64_t lsn, int want_synced);
int au_wait(au_writer *w, uint64_t lsn, int level);

/* Validation shared by the append entries: 0, AU_E_INVAL or AU_E_TOOBIG. */
static int check_range(au_writer *w, uint64_t first_lsn, uint32_t n, const uint8_t *types,
                       const uint32_t *lens, int wait, uint64_t *total, uint64_t *dlen)
{
    int bad = n == 0 || first_lsn == 0 || wait < AU_WAIT_NONE || wait > AU_WAIT_SYNCED;
    *dlen = 0;
    for (uint32_t i = 0; i < n && !bad; i++) {
        if (types[i] == 0 || lens[i] > w->max_record)
            bad = 1;
        *dlen += lens[i];
    }
    *total = *dlen + (uint64_t)n * AU_REC_HDR;
    return bad ? AU_E_INVAL : *total + AU_BATCH_HDR + 8 > AU_MAX_BATCH ? AU_E_TOOBIG : 0;
}

/* Frame (or park) a range whose check gave rc. Mutex held. */
static int append_locked(au_writer *w, uint64_t first_lsn, uint32_t n, const uint8_t *types,
                         const uint32_t *lens, const uint8_t *data, uint64_t total,
                         uint64_t dlen, int rc)
{
    if (w->closed)
        rc = AU_E_CLOSED;
    else if (w->failed)
        rc = AU_E_FAILED;
    else if (!rc && first_lsn == w->next_lsn) {
        rc = frame_locked(w, n, types, lens, data, (size_t)total);
        if (!rc)
            rc = unpark_locked(w);
        if (!rc)
            kick_if_waited(w);   /* someone may wait for what just became framed */
    } else if (!rc)
        rc = first_lsn < w->next_lsn
                 ? AU_E_INVAL
                 : park_locked(w, first_lsn, n, types, lens, data, (size_t)dlen, (size_t)total);
    if (rc && rc != AU_E_CLOSED && rc != AU_E_FAILED) {
        /* the LSNs were reserved: a range that never arrives would stall every later
         * commit, so a refused range fails the writer (the caller validated it first) */
        fail_locked(w, rc < 0 && rc > -4096 ? -rc : EINVAL);
    }
    return rc;
}

int au_append_at(au_writer *w, uint64_t first_lsn, uint32_t n, const uint8_t *types,
                 const uint32_t *lens, const uint8_t *data, int wait)
{
    uint64_t total, dlen;
    int rc = check_range(w, first_lsn, n, types, lens, wait, &total, &dlen);
    pthread_mutex_lock(&w->mu);
    while (!rc && !w->failed && !w->closed && w->pend.len > BACKPRESSURE_BYTES) {
        pthread_cond_signal(&w->bgcv);
        pthread_cond_wait(&w->cv, &w->mu);
    }
    rc = append_locked(w, first_lsn, n, types, lens, data, total, dlen, rc);
    pthread_mutex_unlock(&w->mu);
    if (rc || wait == AU_WAIT_NONE)
        return rc;
    return au_wait(w, first_lsn + n - 1, wait);
}

int au_append_at1(au_writer *w, uint64_t lsn, uint8_t type, const uint8_t *payload,
                  uint32_t len, int wait)
{
    return au_append_at(w, lsn, 1, &type, &len, payload, wait);
}

/* The pending records go out in one batch of the current segment: a write stage with no
 * roll (a roll may wait for a sync in flight and fsync). Mutex held, no leader. */
static int pend_fits_segment(const au_writer *w)
{
    uint64_t blen = AU_BATCH_HDR + pad8(w->pend.len - AU_BATCH_HDR);
    return blen <= AU_MAX_BATCH && w->write_off + blen + AU_BATCH_HDR <= w->seg_size;
}

int au_append_now1(au_writer *w, uint64_t lsn, uint8_t type, const uint8_t *payload,
                   uint32_t len, int write)
{
    uint64_t total, dlen;
    int rc = check_range(w, lsn, 1, &type, &len, AU_WAIT_NONE, &total, &dlen);
    pthread_mutex_lock(&w->mu);
    if (!rc && !w->failed && !w->closed && w->pend.len > BACKPRESSURE_BYTES) {
        pthread_mutex_unlock(&w->mu);
        return AU_AGAIN;
    }
    rc = append_locked(w, lsn, 1, &type, &len, payload, total, dlen, rc);
    if (!rc && write && lsn >= w->written_lsn) {
        /* nobody leads and no roll is due: write it now, on this thread (no sync stage:
         * waiters for an fdatasync are kicked to the background thread) */
        if (lsn < w->next_lsn && !w->leader && pend_fits_segment(w))
            leader_round(w, 0);
        if (lsn >= w->written_lsn)
            rc = w->failed ? AU_E_FAILED : AU_QUEUED;
    }
    pthread_mutex_unlock(&w->mu);
    return rc;
}

static int commit(au_writer *w, uint64_t lsn, int want_synced)
{
    int rc;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        uint64_t have = want_synced ? w->synced_lsn : w->written_lsn;
        if (lsn < have) {
            rc = 0;
            break;
        }
        if (w->failed) {
            rc = AU_E_FAILED;
            break;
        }
        if (w->closed) {
            rc = AU_E_CLOSED;
            break;
        }
        if (lsn < w->next_lsn && !w->leader &&
            (w->pend.count || (want_synced && !w->syncing && w->pub_fd >= 0))) {
            /* nobody leads: this thread does the round (the one-committer fast path).
             * Nothing to write and a sync in flight: wait, its end kicks the next one */
            leader_round(w, want_synced || w->nwant_sync > 0);
            continue;
        }
        /* a round is running (the next one is run by the background thread), or the LSN
         * is reserved but not arrived yet: its owner is on the way, having just left the
         * caller's lock. A range that never comes is a caller bug: fail, do not hang. */
        waiter me = {.next = w->waiters, .lsn = lsn, .want_synced = want_synced};
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&me.cv, &ca);
        pthread_condattr_destroy(&ca);
        w->waiters = &me;
        if (want_synced)
            w->nwant_sync++;
        struct timespec ts;
        deadline_after(&ts, w->hole_ms);
        while (!me.done) {
            if (pthread_cond_timedwait(&me.cv, &w->mu, &ts) == ETIMEDOUT && !me.done) {
                if (lsn >= w->next_lsn)
                    fail_locked(w, ETIMEDOUT);   /* wakes (and unlinks) every waiter */
                else
                    deadline_after(&ts, w->hole_ms);
            }
        }
        pthread_cond_destroy(&me.cv);
    }
    pthread_mutex_unlock(&w->mu);
    return rc;
}

int au_wait(au_writer *w, uint64_t lsn, int level)
{
    switch (level) {
    case AU_WAIT_NONE:
        return 0;
    case AU_WAIT_WRITTEN:
        return commit(w, lsn, 0);
    case AU_WAIT_MODE:
        return commit(w, lsn, w->mode == AU_MODE_SYNC);
    case AU_WAIT_SYNCED:
        return commit(w, lsn, 1);
    }
    return AU_E_INVAL;
}

int au_sync(au_writer *w, uint64_t lsn) { return au_wait(w, lsn, AU_WAIT_MODE); }
int au_write_through(au_writer *w, uint64_t lsn) { return au_wait(w, lsn, AU_WAIT_WRITTEN); }

int au_flush(au_writer *w)
{
    pthread_mutex_lock(&w->mu);
    uint64_t last = w->next_lsn - 1;
    pthread_mutex_unlock(&w->mu);
    return commit(w, last, 1);
}

void au_writer_set_hole_timeout(au_writer *w, uint32_t ms)
{
    pthread_mutex_lock(&w->mu);
    w->hole_ms = ms ? ms : 1;
    pthread_mutex_unlock(&w->mu);
}

int au_writer_failed(au_writer *w)
{
    pthread_mutex_lock(&w->mu);
    int f = w->failed;
    pthread_mutex_unlock(&w->mu);
    return f;
}

void au_writer_stats(au_writer *w, au_stats *s)
{
    pthread_mutex_lock(&w->mu);
    *s = w->st;
    pthread_mutex_unlock(&w->mu);
}

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

void au_writer_durable(au_writer *w, uint64_t *seg_first_lsn, uint64_t *durable_off)
{
    pthread_mutex_lock(&w->mu);
    while (w->leader || w->syncing)   /* read them between rounds */
        pthread_cond_wait(&w->cv, &w->mu);
    *seg_first_lsn = w->seg_first;
    *durable_off = w->durable_off;
    pthread_mutex_unlock(&w->mu);
}

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
    wake_covered(w);
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
        int r = write_at(w, seal, sizeof seal);
        if (!r)
            r = datasync(w);
        if (r)
            rc = r;
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
 * (the Python side ties this to the lifetime of its pointer object). */
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
    pend_free(&w->pend);
    pend_free(&w->spare);
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
