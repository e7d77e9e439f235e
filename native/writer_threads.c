/* The writer's two background threads: the timer/kick thread that runs rounds nobody
 * else leads, and the spare thread that prepares the next segment file. */
#include "aurora.h"
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <time.h>

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

static int past(const struct timespec *ts)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > ts->tv_sec || (now.tv_sec == ts->tv_sec && now.tv_nsec >= ts->tv_nsec);
}

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

/* The spare thread: prepares the next segment file whenever a round asks for one. */
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
