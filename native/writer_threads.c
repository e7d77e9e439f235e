/* The writer's two background threads: the timer/kick thread that runs rounds nobody
 * else leads, and the spare thread that prepares the next segment file. */
#include "aurora.h"
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <time.h>

/* An absolute CLOCK_MONOTONIC time ms from now, for pthread_cond_timedwait: every
 * condition variable of the writer is created on CLOCK_MONOTONIC, so a wall-clock step
 * neither fires nor delays a deadline. */
void wr_deadline_after(struct timespec *ts, uint32_t ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* Whether a wr_deadline_after deadline has passed. */
static int past(const struct timespec *ts)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > ts->tv_sec || (now.tv_sec == ts->tv_sec && now.tv_nsec >= ts->tv_nsec);
}

/* The background thread: runs the rounds no committer leads. It holds the mutex except
 * while asleep on bgcv (until a kick, a nudge or the next tick), asleep on `cv` (while
 * another thread leads) and during a round's I/O. Kicked (committers sleep): a round,
 * with an fdatasync if one of them wants it. A tick (every interval_ms on a fixed
 * schedule: kicks do not push it back) or a nudge (backpressure, interval mode past
 * INTERVAL_UNSYNCED): a round that writes what is pending and, except in os mode,
 * fdatasyncs what is written but unsynced, so a record nobody waits for is durable within
 * interval_ms. A failed writer gets no more rounds. Exits on stop, never as the leader. */
void *wr_bg_main(void *arg)
{
    au_writer *w = arg;
    uint32_t tick_ms = w->interval_ms ? w->interval_ms : 1;
    struct timespec tick;   /* the next timer round: kicks do not push it back */
    wr_deadline_after(&tick, tick_ms);
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
            wr_deadline_after(&tick, tick_ms);
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
        wr_leader_round(w, want_sync || w->nwant_sync > 0);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* The spare thread: whenever a round asks (SP_WANTED), prepares the spare file with the
 * mutex dropped (SP_BUSY: the file is its own until SP_READY hands the fd to a roll).
 * A failure closes and unlinks the file (its pages are never reused: a failed fsync says
 * nothing about them we could trust), is counted unless close cancelled it, is not retried
 * before the next roll (sp_fail_seg) and never fails the writer. Broadcasts `cv` after
 * each attempt, as a roll may wait for it. Exits on stop; close removes a spare left
 * ready. */
void *wr_spare_main(void *arg)
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
