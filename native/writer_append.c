/* The append side of the writer: framing records into the pending buffer, parking
 * ranges that arrive early, and the append entries. No I/O here, except the one round
 * au_append_now1 may lead. */
#include "aurora.h"
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Room for `extra` more framed bytes plus 8 (the padding the write stage zeroes in place
 * after the frames) and for one more append-call boundary. Only the owner of the buffer
 * calls it (append, mutex held). -ENOMEM leaves the buffer as it was, still valid. */
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

/* Empty the buffer but keep its memory: the batch-header slot stays reserved in front. The
 * two buffers (pend, spare) swap in a round, so neither is reallocated per round. */
void wr_pend_reset(pendbuf *p)
{
    p->len = AU_BATCH_HDR;
    p->count = 0;
    p->nbnd = 0;
    p->first_lsn = 0;
}

/* Free the buffer's memory; only au_writer_free, when no thread can touch it. */
void wr_pend_free(pendbuf *p)
{
    free(p->buf);
    free(p->bnd_off);
    free(p->bnd_lsn);
}

/* Frame n records into pend at next_lsn (the caller checked the range is next in line):
 * frame headers, payload copied and its crc taken in one pass, one boundary for the call
 * (a batch is never split inside it), next_lsn advanced. Mutex held, writer healthy. So
 * pend always holds one gap-free LSN run ending at next_lsn - 1. -ENOMEM comes before
 * anything is framed: nothing changes. */
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


/* Keep a private copy of a range that arrived before the ranges in front of it, in the
 * list sorted by first LSN. Mutex held. Refuses (AU_E_INVAL) a range that overlaps the
 * next parked one; an overlap with the one before it is not seen here (the LSN counter
 * of the caller makes neither happen; if one did, the range would never become next and
 * the hole timeout would fail the writer). -ENOMEM: nothing parked. */
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

/* Frame the parked ranges that have become next in line, in order, freeing each copy once
 * framed. Mutex held. On -ENOMEM the range that failed stays parked (and the caller fails
 * the writer). Waiters on these LSNs are woken by the round that writes them. */
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

/* Validation shared by the append entries, before the mutex: 0, AU_E_INVAL (empty range,
 * LSN 0, type 0, a record over max_record, an unknown wait level) or AU_E_TOOBIG (the
 * range, framed, would not fit one batch). Reads only max_record, fixed at open. */
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

/* Frame, or park, a range whose check gave rc. Mutex held. A closed or failed writer
 * refuses with AU_E_CLOSED / AU_E_FAILED and nothing changes. Otherwise the LSNs were
 * reserved by the caller, and a range that never arrives would stall every later commit:
 * any refusal (rc from the check, an LSN already used, an overlap, ENOMEM) fails the
 * writer at once. A range framed may make parked ones next in line, and may be what a
 * sleeping committer waits for: the background thread is kicked. */
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
            wr_kick_if_waited(w);   /* someone may wait for what just became framed */
    } else if (!rc)
        rc = first_lsn < w->next_lsn
                 ? AU_E_INVAL
                 : park_locked(w, first_lsn, n, types, lens, data, (size_t)dlen, (size_t)total);
    if (rc && rc != AU_E_CLOSED && rc != AU_E_FAILED) {
        /* the LSNs were reserved: a range that never arrives would stall every later
         * commit, so a refused range fails the writer (the caller validated it first) */
        wr_fail_locked(w, rc < 0 && rc > -4096 ? -rc : EINVAL);
    }
    return rc;
}

/* Append a reserved range, then wait for it per `wait` (au_wait on its last LSN). Past
 * BACKPRESSURE_BYTES pending it nudges the background thread and sleeps on `cv` until a
 * round takes the buffer (or the writer fails or closes). Returns 0, AU_E_* or -errno;
 * after AU_E_FAILED from the wait the records may be on disk, just not acknowledged. */
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

/* au_append_at for one record. */
int au_append_at1(au_writer *w, uint64_t lsn, uint8_t type, const uint8_t *payload,
                  uint32_t len, int wait)
{
    return au_append_at(w, lsn, 1, &type, &len, payload, wait);
}

/* Whether the pending records go out as one batch of the current segment, i.e. a write
 * stage with no roll (a roll may wait for a sync in flight and for an fsync). Mutex held,
 * no leader: the segment fields it reads are then stable. */
static int pend_fits_segment(const au_writer *w)
{
    uint64_t blen = AU_BATCH_HDR + pad8(w->pend.len - AU_BATCH_HDR);
    return blen <= AU_MAX_BATCH && w->write_off + blen + AU_BATCH_HDR <= w->seg_size;
}

/* For callers that keep the GIL: never sleeps on a condition variable. Past the
 * backpressure limit it returns AU_AGAIN with nothing appended (the writer unchanged).
 * With `write`, and only when nobody leads and no roll is due, it leads a write stage on
 * this thread (one pwrite with the mutex dropped, no fdatasync). 0: appended (and
 * written, with `write`); AU_QUEUED: appended, a later round writes it; AU_E_FAILED if
 * the writer failed before the record was written; other errors as au_append_at. */
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
            wr_leader_round(w, 0);
        if (lsn >= w->written_lsn)
            rc = w->failed ? AU_E_FAILED : AU_QUEUED;
    }
    pthread_mutex_unlock(&w->mu);
    return rc;
}
