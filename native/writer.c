/* The segment writer with group commit (leader/follower).
 *
 * append() frames records into `pend` under the mutex and assigns LSNs; it never does I/O.
 * A committer that finds its LSN not yet covered and no leader active becomes the leader:
 * it takes the whole pending buffer, drops the mutex, does one write (per batch) and one
 * fdatasync, re-locks, advances written/synced LSNs and wakes everyone. All file I/O happens
 * in a leader round, so the file position, the fd and segment rolls need no other locking.
 * A background thread runs rounds for the interval/os modes and for records nobody waits
 * for. Any I/O error fails the writer for good: waiters not yet covered, and every later
 * call, get AU_E_FAILED (the errno is kept); fsync is never retried. */
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
    int failed;            /* errno that failed the writer, 0 if healthy */
    int mode;
    uint32_t interval_ms, max_record;
    uint64_t segment_bytes;
    char *wal_dir;

    /* leader-owned (changed only inside a round) */
    int fd;
    uint64_t seg_first, seg_size, write_off, durable_off;
    uint8_t *stage;
    size_t stage_cap;

    /* mutex-protected */
    pendbuf pend, spare;
    uint64_t next_lsn;     /* next LSN to assign */
    uint64_t written_lsn;  /* every LSN < this is written */
    uint64_t synced_lsn;   /* every LSN < this is fdatasynced */
    uint64_t pub_seg_first, pub_write_off;
    au_stats st;
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

static int datasync(au_writer *w)
{
    int r = au_fdatasync(w->fd);
    w->st.fdatasyncs++;
    if (r < 0)
        return r;
    w->durable_off = w->write_off;
    return 0;
}

/* Seal the current segment and switch to a new one of `size` bytes starting at `lsn`. */
static int roll(au_writer *w, uint64_t lsn, uint64_t size)
{
    int r;
    if (w->durable_off < w->write_off && (r = datasync(w)))
        return r;
    if (w->write_off + AU_BATCH_HDR <= w->seg_size) {
        uint8_t seal[AU_BATCH_HDR];
        au_batch_header(seal, AU_BATCH_HDR, lsn, 0, AU_FLAG_SEAL, w->write_off);
        if ((r = write_at(w, seal, sizeof seal)) || (r = datasync(w)))
            return r;
    }
    if ((r = au_segment_create(w->wal_dir, lsn, size)))
        return r;
    char path[4096];
    snprintf(path, sizeof path, "%s/%020llu.seg", w->wal_dir, (unsigned long long)lsn);
    int fd = au_open(path, O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0)
        return fd;
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
        au_batch_header(b, (uint32_t)blen, lsn, count, 0, w->durable_off);
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

/* One leader round. Called and returns with the mutex held; drops it for the I/O. */
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
    if (!r && do_sync && w->durable_off < w->write_off)
        r = datasync(w);

    pthread_mutex_lock(&w->mu);
    pend_reset(&t);
    w->spare = t;
    w->st.rounds++;
    if (r) {
        if (!w->failed)
            w->failed = r < 0 ? -r : EIO;
    } else {
        w->written_lsn = end_lsn;
        if (do_sync)
            w->synced_lsn = end_lsn;
    }
    w->pub_seg_first = w->seg_first;
    w->pub_write_off = w->write_off;
    w->leader = 0;
    if (w->mode == AU_MODE_INTERVAL && w->write_off - w->durable_off > INTERVAL_UNSYNCED)
        pthread_cond_signal(&w->bgcv);
    pthread_cond_broadcast(&w->cv);
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

static void *bg_main(void *arg)
{
    au_writer *w = arg;
    pthread_mutex_lock(&w->mu);
    while (!w->stop) {
        struct timespec ts;
        deadline_after(&ts, w->interval_ms ? w->interval_ms : 1);
        pthread_cond_timedwait(&w->bgcv, &w->mu, &ts);
        if (w->stop)
            break;
        if (w->failed)
            continue;
        int unsynced = w->mode == AU_MODE_INTERVAL && w->synced_lsn < w->written_lsn;
        if (!w->pend.count && !unsynced)
            continue;
        while (w->leader && !w->stop)
            pthread_cond_wait(&w->cv, &w->mu);
        if (w->stop || w->failed)
            continue;
        leader_round(w, w->mode != AU_MODE_OS);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
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
    w->fd = fd;
    w->mode = mode;
    w->interval_ms = interval_ms;
    w->max_record = max_record;
    w->segment_bytes = segment_bytes;
    w->seg_first = w->pub_seg_first = seg_first_lsn;
    w->seg_size = file_size & ~(uint64_t)7;
    w->write_off = w->durable_off = w->pub_write_off = write_off;
    w->next_lsn = w->written_lsn = w->synced_lsn = next_lsn;
    pend_reset(&w->pend);
    pend_reset(&w->spare);

    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->bgcv, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&w->bg, NULL, bg_main, w) == 0)
        w->bg_started = 1;
    else {
        au_close(fd);
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv);
        pthread_cond_destroy(&w->bgcv);
        free(w->wal_dir);
        free(w);
        return -EAGAIN;
    }
    *out = w;
    return 0;
}

int au_append(au_writer *w, uint32_t n, const uint8_t *types, const uint32_t *lens,
              const uint8_t *data, uint64_t *last_lsn)
{
    if (n == 0)
        return AU_E_INVAL;
    uint64_t total = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (types[i] == 0 || lens[i] > w->max_record)
            return AU_E_INVAL;
        total += AU_REC_HDR + (uint64_t)lens[i];
    }
    if (total + AU_BATCH_HDR + 8 > AU_MAX_BATCH)
        return AU_E_TOOBIG;

    pthread_mutex_lock(&w->mu);
    while (!w->failed && !w->closed && w->pend.len > BACKPRESSURE_BYTES) {
        pthread_cond_signal(&w->bgcv);
        pthread_cond_wait(&w->cv, &w->mu);
    }
    int rc = 0;
    if (w->closed)
        rc = AU_E_CLOSED;
    else if (w->failed)
        rc = AU_E_FAILED;
    else if ((rc = pend_reserve(&w->pend, (size_t)total)) == 0) {
        pendbuf *p = &w->pend;
        if (!p->count)
            p->first_lsn = w->next_lsn;
        uint64_t lsn = w->next_lsn;
        for (uint32_t i = 0; i < n; i++) {
            uint8_t *f = p->buf + p->len;
            put32(f, lens[i]);
            put32(f + 4, au_record_crc(types[i], lsn, data, lens[i]));
            put64(f + 8, lsn);
            f[16] = types[i];
            memcpy(f + AU_REC_HDR, data, lens[i]);
            data += lens[i];
            p->len += AU_REC_HDR + lens[i];
            lsn++;
        }
        p->count += n;
        p->bnd_off[p->nbnd] = p->len;
        p->bnd_lsn[p->nbnd] = lsn;
        p->nbnd++;
        w->next_lsn = lsn;
        *last_lsn = lsn - 1;
    }
    pthread_mutex_unlock(&w->mu);
    return rc;
}

int au_append1(au_writer *w, uint8_t type, const uint8_t *payload, uint32_t len,
               uint64_t *lsn)
{
    return au_append(w, 1, &type, &len, payload, lsn);
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
        if (lsn >= w->next_lsn) {
            rc = AU_E_INVAL;
            break;
        }
        if (w->leader) {
            pthread_cond_wait(&w->cv, &w->mu);
            continue;
        }
        leader_round(w, want_synced);  /* write_through: a write() only, even in sync mode */
    }
    pthread_mutex_unlock(&w->mu);
    return rc;
}

int au_sync(au_writer *w, uint64_t lsn) { return commit(w, lsn, w->mode == AU_MODE_SYNC); }
int au_write_through(au_writer *w, uint64_t lsn) { return commit(w, lsn, 0); }

int au_flush(au_writer *w)
{
    pthread_mutex_lock(&w->mu);
    uint64_t last = w->next_lsn - 1;
    pthread_mutex_unlock(&w->mu);
    return commit(w, last, 1);
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

int au_writer_close(au_writer *w)
{
    pthread_mutex_lock(&w->mu);
    int already = w->closed;
    pthread_mutex_unlock(&w->mu);
    if (already)
        return 0;
    int rc = au_flush(w);
    pthread_mutex_lock(&w->mu);
    while (w->leader)
        pthread_cond_wait(&w->cv, &w->mu);
    w->closed = 1;
    w->stop = 1;
    pthread_cond_broadcast(&w->bgcv);
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    if (w->bg_started)
        pthread_join(w->bg, NULL);
    /* no other thread does I/O now */
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
    pend_free(&w->pend);
    pend_free(&w->spare);
    free(w->stage);
    free(w->wal_dir);
    free(w);
}
