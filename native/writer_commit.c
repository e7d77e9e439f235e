/* Group commit: the waiters, the leader round (write stage, then sync stage) and the
 * waiting entries (au_wait, au_sync, au_write_through, au_flush). */
#include "aurora.h"
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <time.h>

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

/* Wake and unlink the waiters now covered at the level each wants (written or synced), or
 * every waiter once the writer failed or closed. Mutex held. This is the only place a
 * waiter leaves the list and gets `done`, and it keeps nwant_sync equal to the number of
 * linked waiters that want an fdatasync. */
void wr_wake_covered(au_writer *w)
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

/* Fail the writer for good: the first errno wins and is never cleared. Mutex held. Every
 * waiter wakes (AU_E_FAILED unless it was already covered) and every thread asleep on `cv`
 * re-checks. Nothing on disk is touched or undone: what the failed operation left there is
 * recovery's to judge. */
void wr_fail_locked(au_writer *w, int err)
{
    if (!w->failed)
        w->failed = err;
    wr_wake_covered(w);
    pthread_cond_broadcast(&w->cv);
}

/* Mutex held. Someone sleeps in commit() and nobody leads: the background thread (a C
 * thread: it never needs the GIL) runs the next round. With the end of every round and
 * every framed range calling this, a waiter never sleeps with its records pending and
 * nobody bound to write them. A failed writer is not kicked: its waiters were woken. */
void wr_kick_if_waited(au_writer *w)
{
    if (w->waiters && !w->leader && !w->failed) {
        w->kick = 1;
        pthread_cond_signal(&w->bgcv);
    }
}

/* The sync stage: one fdatasync of what is written, unless one runs already (its round
 * kicks the next one for whoever still waits) or a roll is switching segments (pub_fd <
 * 0). Mutex held on entry and return, dropped for the fdatasync only, with `syncing` set:
 * no second fdatasync starts, and a roll waits for it before closing the fd. Success:
 * synced_lsn becomes the written_lsn of its start and durable_off is raised to the
 * published offset of its start (the same segment, as no roll ran meanwhile). Failure
 * fails the writer (never retried: after a failed fdatasync the page cache may lie,
 * "fsyncgate"); synced_lsn stays. The caller wakes the waiters. */
static void sync_stage(au_writer *w)
{
    if (w->syncing || w->pub_fd < 0 || w->failed || w->synced_lsn >= w->written_lsn)
        return;
    w->syncing = 1;
    int fd = w->pub_fd;
    uint64_t lsn = w->written_lsn, off = w->pub_write_off;
    pthread_mutex_unlock(&w->mu);
    uint64_t t0 = wr_now_ns();
    int r = au_fdatasync(fd);
    pthread_mutex_lock(&w->mu);
    w->syncing = 0;
    wr_count_sync(w, t0);
    if (r < 0) {
        if (!w->failed)
            w->failed = -r;
    } else if (!w->failed) {
        w->synced_lsn = lsn;   /* only the sync stage raises it once a writer is open */
        if (off > w->durable_off)     /* same segment: a roll waits for this stage */
            __atomic_store_n(&w->durable_off, off, __ATOMIC_RELAXED);
    }
}

/* One leader round. Called with the mutex held and no leader (the caller checked),
 * returns with the mutex held and no leader; only the thread with `leader` set changes
 * fd, the segment fields and write_off. Write stage: take the whole pending buffer (the
 * other buffer becomes pend, so appends go on meanwhile), drop the mutex, write it
 * (rolling segments as needed), re-lock, raise written_lsn to the LSN after the taken
 * records, publish the position (pub_*) for the sync stage and the readers, and ask the
 * spare thread for the next segment file once this one is SPARE_AT_NUM/SPARE_AT_DEN full.
 * Sync stage (do_sync): the waiters that needed only the write are woken first. A failure
 * keeps the first errno and acknowledges nothing more: written_lsn stays and the taken
 * records are dropped from memory (whole batches written before the failing write stay on
 * disk, unacknowledged). The end wakes the covered waiters, kicks the background thread
 * for those left, nudges it in interval mode past INTERVAL_UNSYNCED unsynced bytes, and
 * broadcasts `cv` (backpressure, close, rolls and au_writer_durable wait there). */
void wr_leader_round(au_writer *w, int do_sync)
{
    w->leader = 1;
    pendbuf t = w->pend;
    w->pend = w->spare;
    wr_pend_reset(&w->pend);
    uint64_t end_lsn = w->next_lsn;
    pthread_mutex_unlock(&w->mu);

    int r = 0;
    if (t.count)
        r = wr_write_records(w, &t);

    pthread_mutex_lock(&w->mu);
    wr_pend_reset(&t);
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
        wr_wake_covered(w);   /* those that needed only the write go before the fdatasync */
        sync_stage(w);
    }
    wr_wake_covered(w);
    wr_kick_if_waited(w);
    if (w->mode == AU_MODE_INTERVAL && w->pub_write_off - w->durable_off > INTERVAL_UNSYNCED)
        pthread_cond_signal(&w->bgcv);
    pthread_cond_broadcast(&w->cv);  /* backpressure, close, rolls, the background thread */
}

/* Wait until every LSN <= lsn is written (or fdatasynced, want_synced). Coverage is
 * checked first: an LSN covered before the writer failed or closed still returns 0; then
 * AU_E_FAILED, then AU_E_CLOSED. Nobody leads and there is work (records pending, or a
 * wanted fdatasync with none in flight and no roll switching): this thread leads the round
 * itself, then re-checks. Otherwise it sleeps on its own condition variable, linked in
 * w->waiters, until wr_wake_covered unlinks it: the current leader's end, a framed range
 * (wr_kick_if_waited) or a sync stage's end brings the round that covers it. The node
 * lives on this stack and commit() returns only once it is unlinked (`done`). An LSN
 * reserved but still not framed after hole_ms fails the writer with ETIMEDOUT (a caller
 * whose range never comes would otherwise stall every commit); a slow round only re-arms
 * the deadline. The mutex is held except while asleep and during a round's I/O. */
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
            wr_leader_round(w, want_synced || w->nwant_sync > 0);
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
        wr_deadline_after(&ts, w->hole_ms);
        while (!me.done) {
            if (pthread_cond_timedwait(&me.cv, &w->mu, &ts) == ETIMEDOUT && !me.done) {
                if (lsn >= w->next_lsn)
                    wr_fail_locked(w, ETIMEDOUT);   /* wakes (and unlinks) every waiter */
                else
                    wr_deadline_after(&ts, w->hole_ms);
            }
        }
        pthread_cond_destroy(&me.cv);
    }
    pthread_mutex_unlock(&w->mu);
    return rc;
}

/* Wait per level for every LSN <= lsn (reserved by the caller): NONE returns at once,
 * WRITTEN once written to the OS, MODE once durable per the mode (fdatasynced in sync
 * mode, written otherwise), SYNCED once fdatasynced in any mode. AU_E_INVAL for another
 * level. The mode is fixed at open, so it is read without the mutex. */
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

/* au_wait(AU_WAIT_MODE). */
int au_sync(au_writer *w, uint64_t lsn) { return au_wait(w, lsn, AU_WAIT_MODE); }
/* au_wait(AU_WAIT_WRITTEN). */
int au_write_through(au_writer *w, uint64_t lsn) { return au_wait(w, lsn, AU_WAIT_WRITTEN); }

/* Wait until every LSN framed by now is fdatasynced, in any mode. Ranges still parked
 * (not yet next in line) are not waited for; with nothing ever appended it returns 0. */
int au_flush(au_writer *w)
{
    pthread_mutex_lock(&w->mu);
    uint64_t last = w->next_lsn - 1;
    pthread_mutex_unlock(&w->mu);
    return commit(w, last, 1);
}
