/* The shared control page: cross-process exclusion and group commit (issue 19, phase 1).
 *
 * Standalone: nothing in writer.c uses it yet. docs/MULTIPROCESS.md is the protocol; the
 * byte layout below is its "Control page" section. In short:
 *
 *   - the page is a file (DIR/shm, 0600) every process maps MAP_SHARED;
 *   - `append_mu` (robust, process-shared) orders appends: the holder writes its bytes at
 *     `write_end` and advances it; a holder that dies is noticed by the next locker
 *     (EOWNERDEAD), which repairs the tail before going on;
 *   - `sync_mu` (robust, process-shared) is held by the one leader that runs fdatasync; it
 *     covers every byte below the `write_end` it read before syncing (PostgreSQL XLogFlush);
 *   - a committer whose bytes are already below `synced_end` returns at once; the others
 *     sleep on a futex word of their own (a waiter slot) and the leader wakes only the ones
 *     its fdatasync covered, plus one uncovered waiter to lead the next round;
 *   - the page is never trusted beyond what the log confirms: the first process to attach
 *     (nobody else holds the page's shared flock) rebuilds it from the log end it was given,
 *     and a page that fails validation is rebuilt the same way.
 *
 * _DEFAULT_SOURCE: syscall() for futex(2) (glibc has no wrapper). */
#define _DEFAULT_SOURCE
#include "aurora.h"
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* ---- layout (docs/MULTIPROCESS.md, "Control page"); all fields native-endian, the page
 * never leaves the machine, and `abi` refuses a page made by another ABI ---- */
#define OFF_MAGIC        0    /* 8 B  "AURSHM01" */
#define OFF_VERSION      8    /* u32  AU_SHM_VERSION */
#define OFF_PAGE_BYTES   12   /* u32  AU_SHM_BYTES */
#define OFF_NSLOTS       16   /* u32  AU_SHM_SLOTS */
#define OFF_ABI          20   /* u32  sizeof(pthread_mutex_t) | sizeof(long) << 8 | LE << 16 */
#define OFF_GENERATION   24   /* u64  +1 at every rebuild */
#define OFF_HDR_CRC      32   /* u32  masked crc32c of bytes 0..31 */
#define OFF_READY        36   /* u32  1 once the page is initialised */
#define OFF_APPEND_MU    64   /* pthread_mutex_t (robust, pshared), 64 B reserved */
#define OFF_SYNC_MU      128  /* pthread_mutex_t (robust, pshared), 64 B reserved */
#define OFF_WRITE_END    192  /* u64  bytes written and published (under append_mu) */
#define OFF_WRITING_END  200  /* u64  end of the write in progress (under append_mu) */
#define OFF_FAILED       208  /* i32  0, or the errno of a failed fdatasync (never retried) */
#define OFF_UNLOCK_SEQ   212  /* u32  futex word: +1 at every append_mu unlock */
#define OFF_LOCK_WAITERS 216  /* u32  threads sleeping in au_shm_wait_unlock */
#define OFF_STANDBY      220  /* u32  pid of the waiter blocked on sync_mu (0 = none) */
#define OFF_NEXT_LSN     224  /* u64  the log's next LSN (under append_mu; log mode only) */
#define OFF_APPEND_SEQ   232  /* u32  futex word: +1 at every au_shm_write_batch publish */
#define OFF_ROLL_SEQ     236  /* u32  +1 at every roll (a segment file may have been replaced) */
#define OFF_APPEND_WAITERS 240 /* u32  threads asleep in au_shm_wait_append (wake only then) */
#define OFF_SYNCED_END   256  /* u64  every byte below it is fdatasynced (own cache line) */
#define OFF_LEADER_PID   264  /* u32  pid of the process leading the current sync (info) */
#define OFF_COUNTERS     320  /* u64 x 8: see enum below; statistics, never decisions */
#define OFF_SLOTS        1024 /* AU_SHM_SLOTS x 16 B: u32 word, u32 pid, u64 target */
#define SLOT_BYTES       16

_Static_assert(sizeof(pthread_mutex_t) <= 64, "a mutex must fit its 64-byte field");
_Static_assert(OFF_SLOTS + SLOT_BYTES * AU_SHM_SLOTS <= AU_SHM_BYTES, "slots fit the page");

enum { C_FDATASYNCS, C_COMMITS, C_COVERED, C_WAKEUPS, C_OWNER_DIED, C_LEADER_DIED,
       C_TIMEOUTS, C_SLOT_RECLAIMS };

#define SLOT_WAITING 0u   /* futex word: asleep (or about to sleep) */
#define SLOT_COVERED 1u   /* a leader's fdatasync covered the target (a hint: recheck) */
#define SLOT_LEAD    2u   /* not covered: retry the sync lock, lead the next round */

static const char MAGIC[8] = {'A', 'U', 'R', 'S', 'H', 'M', '0', '1'};

/* fork() calls in this process image (pthread_atfork, child side): check() compares pids,
 * a syscall, only when a fork happened since the attach */
static unsigned fork_gen;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
static void on_fork_child(void) { __atomic_fetch_add(&fork_gen, 1, __ATOMIC_RELAXED); }
static void fork_watch(void) { pthread_atfork(NULL, NULL, on_fork_child); }

struct au_shm {
    uint8_t *page;
    unsigned fork_gen; /* fork_gen at the attach */
    int page_fd;       /* holds LOCK_SH on the page file while attached */
    pid_t pid;         /* the process that attached; a forked child must reattach */
    uint32_t poll_ms;  /* how long a waiter sleeps before it checks the leader is alive */
    int rebuilt;       /* this attach rebuilt the page */
    int gate;          /* the attach gate, held between attach_begin and attach_end */
    int alone;         /* attach_begin: nobody else is attached (LOCK_EX on the page) */
};

#define U64(h, off) ((uint64_t *)((h)->page + (off)))
#define U32(h, off) ((uint32_t *)((h)->page + (off)))
#define I32(h, off) ((int32_t *)((h)->page + (off)))
#define APPEND_MU(h) ((pthread_mutex_t *)((h)->page + OFF_APPEND_MU))
#define SYNC_MU(h) ((pthread_mutex_t *)((h)->page + OFF_SYNC_MU))

static uint64_t ld(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static void st(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static void count(au_shm *h, int which)
{
    __atomic_fetch_add(U64(h, OFF_COUNTERS + 8 * which), 1, __ATOMIC_RELAXED);
}

static uint32_t abi_tag(void)
{
    const uint16_t one = 1;
    return (uint32_t)sizeof(pthread_mutex_t) | (uint32_t)sizeof(long) << 8 |
           (uint32_t)(*(const uint8_t *)&one) << 16;
}

static uint8_t *slot(au_shm *h, uint32_t i) { return h->page + OFF_SLOTS + SLOT_BYTES * i; }
static uint32_t *slot_word(au_shm *h, uint32_t i) { return (uint32_t *)slot(h, i); }
static uint32_t *slot_pid(au_shm *h, uint32_t i) { return (uint32_t *)(slot(h, i) + 4); }
static uint64_t *slot_target(au_shm *h, uint32_t i) { return (uint64_t *)(slot(h, i) + 8); }

static int futex_wait(uint32_t *word, uint32_t expect, uint32_t ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    /* shared futex (no FUTEX_PRIVATE_FLAG): the word lives in a MAP_SHARED file page */
    long r = syscall(SYS_futex, word, FUTEX_WAIT, expect, &ts, NULL, 0);
    return r < 0 ? -errno : 0;
}

static void futex_wake(uint32_t *word, int n)
{
    syscall(SYS_futex, word, FUTEX_WAKE, n, NULL, NULL, 0);
}

static int init_mutex(pthread_mutex_t *mu)
{
    pthread_mutexattr_t a;
    int r = pthread_mutexattr_init(&a);
    if (!r) r = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    if (!r) r = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    if (!r) r = pthread_mutex_init(mu, &a);
    pthread_mutexattr_destroy(&a);
    return -r;
}

/* A page is valid when its fixed header matches this build and its crc, it is marked ready,
 * and its positions are ordered. (The mutexes cannot be checked; a rebuild re-creates them.) */
static int page_valid(au_shm *h)
{
    const uint8_t *p = h->page;
    if (memcmp(p + OFF_MAGIC, MAGIC, 8) != 0) return 0;
    if (*U32(h, OFF_VERSION) != AU_SHM_VERSION || *U32(h, OFF_PAGE_BYTES) != AU_SHM_BYTES ||
        *U32(h, OFF_NSLOTS) != AU_SHM_SLOTS || *U32(h, OFF_ABI) != abi_tag())
        return 0;
    if (*U32(h, OFF_HDR_CRC) != au_crc_mask(au_crc32c(0, p, OFF_HDR_CRC))) return 0;
    if (__atomic_load_n(U32(h, OFF_READY), __ATOMIC_ACQUIRE) != 1) return 0;
    uint64_t w = ld(U64(h, OFF_WRITE_END)), s = ld(U64(h, OFF_SYNCED_END));
    uint64_t wi = ld(U64(h, OFF_WRITING_END));
    return s <= w && wi >= w;
}

/* Rebuild from what the log confirms: everything below `log_end` is taken as written and,
 * after one fdatasync of the log (its bytes may come from a killed process and never have
 * been synced: FORMAT.md recovery rule 6), as durable. Only called by a process that is
 * alone on the page (it holds the page's flock exclusively). */
static int rebuild(au_shm *h, int log_fd, uint64_t log_end)
{
    uint64_t gen = *U64(h, OFF_GENERATION);
    if (memcmp(h->page + OFF_MAGIC, MAGIC, 8) != 0) gen = 0;
    int r = log_fd >= 0 ? au_fdatasync(log_fd) : 0;
    if (r < 0) return r;
    memset(h->page, 0, AU_SHM_BYTES);
    memcpy(h->page + OFF_MAGIC, MAGIC, 8);
    *U32(h, OFF_VERSION) = AU_SHM_VERSION;
    *U32(h, OFF_PAGE_BYTES) = AU_SHM_BYTES;
    *U32(h, OFF_NSLOTS) = AU_SHM_SLOTS;
    *U32(h, OFF_ABI) = abi_tag();
    *U64(h, OFF_GENERATION) = gen + 1;
    *U32(h, OFF_HDR_CRC) = au_crc_mask(au_crc32c(0, h->page, OFF_HDR_CRC));
    r = init_mutex(APPEND_MU(h));
    if (!r) r = init_mutex(SYNC_MU(h));
    if (r) return r;
    *U64(h, OFF_WRITE_END) = log_end;
    *U64(h, OFF_WRITING_END) = log_end;
    *U64(h, OFF_SYNCED_END) = log_fd >= 0 ? log_end : 0;
    __atomic_store_n(U32(h, OFF_READY), 1, __ATOMIC_RELEASE);
    h->rebuilt = 1;
    return 0;
}

/* Attach in two steps, so that the log can be recovered in between by the one process
 * that is alone (docs/INTERNALS.md, "Shared mode"): attach_begin maps the page, takes the
 * attach gate and tells whether nobody else is attached (*alone); attach_end rebuilds the
 * page from the log's end (alone) or validates it, and releases the gate. */
int au_shm_attach_begin(au_shm **out, const char *path, int *alone)
{
    *out = NULL;
    *alone = 0;
    au_shm *h = calloc(1, sizeof *h);
    if (!h) return -ENOMEM;
    pthread_once(&fork_once, fork_watch);
    h->fork_gen = __atomic_load_n(&fork_gen, __ATOMIC_RELAXED);
    h->pid = getpid();
    h->poll_ms = AU_SHM_POLL_MS;
    h->gate = -1;
    int fd = au_open(path, O_RDWR | O_CREAT | au_o_cloexec(), 0600);
    if (fd < 0) { free(h); return fd; }
    h->page_fd = fd;
    int r = 0;
    if (au_file_size(fd) < AU_SHM_BYTES && (r = au_ftruncate(fd, AU_SHM_BYTES)) < 0) goto fail;
    void *m = mmap(NULL, AU_SHM_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) { r = -errno; goto fail; }
    h->page = m;
    /* Attach under the page's own flock: LOCK_EX succeeds only when no process is attached
     * (each holds LOCK_SH while attached), so the page may be stale from a crash and is
     * rebuilt from the log; otherwise it is validated. The EX->SH conversion is not atomic
     * (flock(2)), so the EX attempt and the conversion happen under a second lock, on
     * `<path>.open`, that every attacher takes first. */
    size_t n = strlen(path);
    char *gate_path = malloc(n + 6);
    if (!gate_path) { r = -ENOMEM; goto fail; }
    memcpy(gate_path, path, n);
    memcpy(gate_path + n, ".open", 6);
    int gate = au_open(gate_path, O_RDWR | O_CREAT | au_o_cloexec(), 0600);
    free(gate_path);
    if (gate < 0) { r = gate; goto fail; }
    if ((r = au_flock(gate, LOCK_EX)) < 0) { au_close(gate); goto fail; }
    h->gate = gate;
    h->alone = au_flock(fd, LOCK_EX | LOCK_NB) == 0;
    *alone = h->alone;
    *out = h;
    return 0;
fail:
    if (h->page) munmap(h->page, AU_SHM_BYTES);
    au_close(fd);
    free(h);
    return r;
}

static void release_gate(au_shm *h)
{
    if (h->gate >= 0) {
        au_flock(h->gate, LOCK_UN);
        au_close(h->gate);
        h->gate = -1;
    }
}

/* Give up an attach begun with au_shm_attach_begin (the caller's recovery failed). */
void au_shm_attach_abort(au_shm *h)
{
    if (!h) return;
    release_gate(h);
    au_shm_close(h);
}

int au_shm_attach_end(au_shm *h, int log_fd, uint64_t log_end, uint64_t next_lsn)
{
    int r;
    if (h->alone) {
        r = rebuild(h, log_fd, log_end);
        if (!r) {
            *U64(h, OFF_NEXT_LSN) = next_lsn;
            r = au_flock(h->page_fd, LOCK_SH);   /* nobody can take EX meanwhile: gate held */
        }
    } else {
        r = au_flock(h->page_fd, LOCK_SH);
        if (!r && !page_valid(h)) r = AU_E_SHM_CORRUPT;  /* damaged while others use it */
        if (!r && log_end) {
            /* others attached: the page may know more than our scan (they appended since);
             * it may not know less than the log confirms */
            int lr = au_shm_lock(h);
            if (lr >= 0) {
                if (ld(U64(h, OFF_WRITE_END)) < log_end) {
                    st(U64(h, OFF_WRITE_END), log_end);
                    st(U64(h, OFF_WRITING_END), log_end);
                }
                au_shm_unlock(h);
            } else {
                r = lr;
            }
        }
    }
    release_gate(h);
    return r;
}

int au_shm_open(au_shm **out, const char *path, int log_fd, uint64_t log_end)
{
    int alone;
    int r = au_shm_attach_begin(out, path, &alone);
    if (r) return r;
    r = au_shm_attach_end(*out, log_fd, log_end, 0);
    if (r) {
        au_shm_close(*out);
        *out = NULL;
    }
    return r;
}

void au_shm_close(au_shm *h)
{
    if (!h) return;
    if (h->page) munmap(h->page, AU_SHM_BYTES);
    /* releases LOCK_SH once no fd of this open file description is left (in a forked
     * child, closing its copy leaves the parent's lock alone; never LOCK_UN, which would
     * release it for both) */
    if (h->page_fd >= 0) au_close(h->page_fd);
    free(h);
}

static int check(au_shm *h);

/* Leave the page but keep the mapping until au_shm_close: a thread of this process may
 * still be inside a call that uses it (a waiter asleep). The mapping holds a reference to
 * the open file description, so closing the fd alone would keep the flock: it is released
 * explicitly (only by the process that attached: check() refuses a forked child). */
void au_shm_detach(au_shm *h)
{
    if (h->page_fd >= 0 && check(h) == 0) {
        au_flock(h->page_fd, LOCK_UN);
        au_close(h->page_fd);
        h->page_fd = -1;
    }
}

int au_shm_rebuilt(au_shm *h) { return h->rebuilt; }

void au_shm_set_poll_ms(au_shm *h, uint32_t ms) { h->poll_ms = ms ? ms : 1; }

static int check(au_shm *h)
{
    /* a mapping inherited over fork() is the parent's attach: the child holds no flock of
     * its own and its robust-list entries would be wrong; it must open its own */
    if (h->fork_gen == __atomic_load_n(&fork_gen, __ATOMIC_RELAXED)) return 0;
    return h->pid == getpid() ? 0 : AU_E_SHM_FORKED;
}

int au_shm_lock(au_shm *h)
{
    int r = check(h);
    if (r) return r;
    r = pthread_mutex_lock(APPEND_MU(h));
    if (r == 0) return 0;
    if (r == EOWNERDEAD) {
        /* the previous holder died mid-append: what it was writing, [write_end,
         * writing_end), was never published; the caller repairs before unlocking */
        pthread_mutex_consistent(APPEND_MU(h));
        count(h, C_OWNER_DIED);
        return AU_SHM_OWNER_DIED;
    }
    return -r;
}

void au_shm_unlock(au_shm *h)
{
    pthread_mutex_unlock(APPEND_MU(h));
    /* Dekker with au_shm_wait_unlock: it counts itself in, then rechecks the sequence */
    __atomic_fetch_add(U32(h, OFF_UNLOCK_SEQ), 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(U32(h, OFF_LOCK_WAITERS), __ATOMIC_SEQ_CST))
        futex_wake(U32(h, OFF_UNLOCK_SEQ), 1);
}

/* The append lock for callers that hold a GIL (docs/MULTIPROCESS.md, "The GIL and
 * append_mu"): never blocks. Called with the GIL kept (ctypes.PyDLL), so the lock is only
 * ever taken by a thread that can run at once: nobody holds append_mu while waiting for
 * its own process's GIL. 0, AU_SHM_OWNER_DIED, AU_SHM_BUSY, or < 0. */
int au_shm_trylock(au_shm *h)
{
    int r = check(h);
    if (r) return r;
    r = pthread_mutex_trylock(APPEND_MU(h));
    if (r == 0) return 0;
    if (r == EBUSY) return AU_SHM_BUSY;
    if (r == EOWNERDEAD) {
        pthread_mutex_consistent(APPEND_MU(h));
        count(h, C_OWNER_DIED);
        return AU_SHM_OWNER_DIED;
    }
    return -r;
}

uint32_t au_shm_unlock_seq(au_shm *h)
{
    return __atomic_load_n(U32(h, OFF_UNLOCK_SEQ), __ATOMIC_SEQ_CST);
}

/* Sleep (call it with the GIL dropped) until append_mu is unlocked after `seen` was read
 * (au_shm_unlock_seq, before the au_shm_trylock that failed), or `ms` pass: a holder that
 * dies never unlocks, and the caller's next au_shm_trylock then gets AU_SHM_OWNER_DIED.
 * 0 = unlocked since (or woken), -ETIMEDOUT, or < 0. */
int au_shm_wait_unlock(au_shm *h, uint32_t seen, uint32_t ms)
{
    int r = check(h);
    if (r) return r;
    __atomic_fetch_add(U32(h, OFF_LOCK_WAITERS), 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(U32(h, OFF_UNLOCK_SEQ), __ATOMIC_SEQ_CST) == seen) {
        r = futex_wait(U32(h, OFF_UNLOCK_SEQ), seen, ms);
        if (r == -EAGAIN || r == -EINTR) r = 0;   /* the word moved, or a signal: retry */
    }
    __atomic_fetch_sub(U32(h, OFF_LOCK_WAITERS), 1, __ATOMIC_SEQ_CST);
    return r;
}

int au_shm_reserve(au_shm *h, uint32_t len, uint64_t *off)
{
    uint64_t w = ld(U64(h, OFF_WRITE_END));
    st(U64(h, OFF_WRITING_END), w + len);
    *off = w;
    return 0;
}

void au_shm_publish(au_shm *h, uint64_t end)
{
    st(U64(h, OFF_WRITE_END), end);
    st(U64(h, OFF_WRITING_END), end);
}

int au_shm_set_tail(au_shm *h, uint64_t write_end)
{
    if (write_end < ld(U64(h, OFF_SYNCED_END))) return AU_E_INVAL;  /* synced stays synced */
    au_shm_publish(h, write_end);
    return 0;
}

/* The default repair for a byte stream: the dead holder's unpublished bytes are zeroed, so
 * the file is zeros after write_end again (FORMAT.md: the end of data is a zero batch_len). */
static int repair_tail(au_shm *h, int fd)
{
    uint64_t w = ld(U64(h, OFF_WRITE_END)), wi = ld(U64(h, OFF_WRITING_END));
    static const uint8_t zeros[4096];
    while (wi > w) {
        size_t k = wi - w > sizeof zeros ? sizeof zeros : (size_t)(wi - w);
        int64_t r = au_pwrite_full(fd, zeros, k, (int64_t)w);
        if (r < 0) return (int)r;
        w += k;
    }
    st(U64(h, OFF_WRITING_END), ld(U64(h, OFF_WRITE_END)));
    return 0;
}

int au_shm_write_locked(au_shm *h, int fd, const uint8_t *buf, uint32_t len, uint64_t *end)
{
    int r;
    /* writing_end above write_end after the lock means a holder died mid-write (whoever
     * got EOWNERDEAD may have been au_shm_open, which has no fd to repair with) */
    if (ld(U64(h, OFF_WRITING_END)) != ld(U64(h, OFF_WRITE_END)) &&
        (r = repair_tail(h, fd)) < 0)
        return r;
    uint64_t off;
    au_shm_reserve(h, len, &off);
    int64_t w = au_pwrite_full(fd, buf, len, (int64_t)off);
    if (w < 0) {
        /* nothing published; the next appender writes over whatever landed */
        st(U64(h, OFF_WRITING_END), off);
        return (int)w;
    }
    au_shm_publish(h, off + len);
    count(h, C_COMMITS);
    *end = off + len;
    return 0;
}

int au_shm_append(au_shm *h, int fd, const uint8_t *buf, uint32_t len, uint64_t *end)
{
    int r = au_shm_lock(h);
    if (r < 0) return r;
    r = au_shm_write_locked(h, fd, buf, len, end);
    au_shm_unlock(h);
    return r;
}

/* Slots: a waiter claims a free slot (pid 0 -> its pid), publishes its target and sleeps on
 * its word. A slot left by a dead process is taken back when no free one is left. */
static int slot_take(au_shm *h, uint64_t target)
{
    uint32_t me = (uint32_t)h->pid;
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t i = 0; i < AU_SHM_SLOTS; i++) {
            uint32_t owner = __atomic_load_n(slot_pid(h, i), __ATOMIC_RELAXED);
            if (owner != 0) {
                if (pass == 0 || kill((pid_t)owner, 0) == 0 || errno != ESRCH) continue;
                if (!__atomic_compare_exchange_n(slot_pid(h, i), &owner, me, 0,
                                                 __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
                    continue;
                count(h, C_SLOT_RECLAIMS);
            } else {
                uint32_t zero = 0;
                if (!__atomic_compare_exchange_n(slot_pid(h, i), &zero, me, 0,
                                                 __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
                    continue;
            }
            __atomic_store_n(slot_word(h, i), SLOT_WAITING, __ATOMIC_RELAXED);
            __atomic_store_n(slot_target(h, i), target, __ATOMIC_SEQ_CST);
            return (int)i;
        }
    }
    return -1;
}

static void slot_free(au_shm *h, int i)
{
    __atomic_store_n(slot_target(h, (uint32_t)i), UINT64_MAX, __ATOMIC_RELAXED);
    __atomic_store_n(slot_pid(h, (uint32_t)i), 0, __ATOMIC_RELEASE);
}

/* After a sync (and after releasing sync_mu): wake every waiter the sync covered, and one
 * that it did not (the smallest target) to lead the next round. Words are hints; a woken
 * waiter always rechecks synced_end, so a slot reused meanwhile is at worst woken early. */
static void wake_covered(au_shm *h)
{
    uint64_t synced = ld(U64(h, OFF_SYNCED_END));
    int next = -1;
    uint64_t next_target = UINT64_MAX;
    for (uint32_t i = 0; i < AU_SHM_SLOTS; i++) {
        if (__atomic_load_n(slot_pid(h, i), __ATOMIC_ACQUIRE) == 0) continue;
        uint64_t t = __atomic_load_n(slot_target(h, i), __ATOMIC_ACQUIRE);
        if (t == UINT64_MAX) continue;
        if (t <= synced) {
            if (__atomic_exchange_n(slot_word(h, i), SLOT_COVERED, __ATOMIC_SEQ_CST) !=
                SLOT_COVERED) {
                futex_wake(slot_word(h, i), 1);
                count(h, C_WAKEUPS);
            }
        } else if (t < next_target) {
            next_target = t;
            next = (int)i;
        }
    }
    if (next >= 0) {
        uint32_t w = SLOT_WAITING;
        if (__atomic_compare_exchange_n(slot_word(h, (uint32_t)next), &w, SLOT_LEAD, 0,
                                        __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
            futex_wake(slot_word(h, (uint32_t)next), 1);
            count(h, C_WAKEUPS);
        }
    }
}

/* Every release of sync_mu goes through here. Dekker with the waiter: it stores its slot,
 * fences, then tries sync_mu; we unlock, fence, then scan the slots: one of the two sees
 * the other. (A release that skipped the scan, e.g. by a leader that found itself
 * covered, would leave a waiter that failed its trylock meanwhile asleep until its poll.) */
static void release_sync(au_shm *h)
{
    pthread_mutex_unlock(SYNC_MU(h));
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    wake_covered(h);
}

/* Lead, holding sync_mu: 1 = synced (or found covered), < 0 = error. Releases sync_mu. */
static int lead_locked(au_shm *h, int fd, uint64_t end, int my_slot)
{
    /* leading: nobody needs to wake us (and our own scan must not count us) */
    if (my_slot >= 0)
        __atomic_store_n(slot_target(h, (uint32_t)my_slot), UINT64_MAX, __ATOMIC_RELAXED);
    int failed = __atomic_load_n(I32(h, OFF_FAILED), __ATOMIC_ACQUIRE);
    if (failed) {
        release_sync(h);
        return -failed;
    }
    if (ld(U64(h, OFF_SYNCED_END)) >= end) {
        release_sync(h);
        count(h, C_COVERED);
        return 1;
    }
    uint64_t target = ld(U64(h, OFF_WRITE_END));  /* every write published before this */
    __atomic_store_n(U32(h, OFF_LEADER_PID), (uint32_t)h->pid, __ATOMIC_RELAXED);
    int s = au_fdatasync(fd);
    if (s < 0) {
        /* never retried (FORMAT.md crash assumption 2): every waiter gets the error */
        __atomic_store_n(I32(h, OFF_FAILED), -s, __ATOMIC_RELEASE);
    } else {
        count(h, C_FDATASYNCS);
        if (target > ld(U64(h, OFF_SYNCED_END))) st(U64(h, OFF_SYNCED_END), target);
    }
    release_sync(h);
    return s < 0 ? s : 1;
}

/* A leader that died mid-fdatasync left sync_mu EOWNERDEAD: its sync never finished, so
 * synced_end was not advanced; the next holder simply syncs again. */
static int took_sync(au_shm *h, int r)
{
    if (r == EOWNERDEAD) {
        pthread_mutex_consistent(SYNC_MU(h));
        count(h, C_LEADER_DIED);
        return 0;
    }
    return r;
}

/* Try to lead: take sync_mu without blocking. 1 = done, 0 = busy, < 0 = error. */
static int try_lead(au_shm *h, int fd, uint64_t end, int my_slot)
{
    int r = pthread_mutex_trylock(SYNC_MU(h));
    if (r == EBUSY) return 0;
    if ((r = took_sync(h, r))) return -r;
    return lead_locked(h, fd, end, my_slot);
}

/* The standby: one waiter at a time blocks in pthread_mutex_lock(sync_mu) instead of on its
 * slot, so a leader that dies mid-fdatasync is noticed at once (the kernel hands the
 * standby the lock with EOWNERDEAD) instead of after a poll. 1 = done, 0 = someone else is
 * the standby (sleep on the slot), < 0 = error. A standby whose process died is replaced
 * by the first waiter whose poll runs out. */
static int standby_lead(au_shm *h, int fd, uint64_t end, int my_slot)
{
    uint32_t none = 0, me = (uint32_t)h->pid;
    uint32_t *sb = U32(h, OFF_STANDBY);
    if (!__atomic_compare_exchange_n(sb, &none, me, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
        return 0;
    int r = took_sync(h, pthread_mutex_lock(SYNC_MU(h)));
    __atomic_store_n(sb, 0, __ATOMIC_SEQ_CST);
    if (r) return -r;
    return lead_locked(h, fd, end, my_slot);
}

static void standby_check(au_shm *h)
{
    uint32_t *sb = U32(h, OFF_STANDBY);
    uint32_t pid = __atomic_load_n(sb, __ATOMIC_ACQUIRE);
    if (pid && kill((pid_t)pid, 0) != 0 && errno == ESRCH)
        __atomic_compare_exchange_n(sb, &pid, 0, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED);
}

int au_shm_wait_synced(au_shm *h, int fd, uint64_t end)
{
    int r = check(h);
    if (r) return r;
    int sl = -1;
    for (;;) {
        if (ld(U64(h, OFF_SYNCED_END)) >= end) {
            if (sl < 0) count(h, C_COVERED);
            break;
        }
        int failed = __atomic_load_n(I32(h, OFF_FAILED), __ATOMIC_ACQUIRE);
        if (failed) { r = -failed; break; }
        if (sl >= 0) {
            __atomic_store_n(slot_word(h, (uint32_t)sl), SLOT_WAITING, __ATOMIC_SEQ_CST);
            __atomic_store_n(slot_target(h, (uint32_t)sl), end, __ATOMIC_SEQ_CST);
        }
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        r = try_lead(h, fd, end, sl);
        if (r != 0) break;            /* 1: done; < 0: error */
        if (sl < 0) {
            sl = slot_take(h, end);
            if (sl < 0) {             /* every slot taken by live waiters: poll */
                struct timespec ts = {0, 200000};
                nanosleep(&ts, NULL);
            }
            continue;                 /* recheck after publishing the slot */
        }
        r = standby_lead(h, fd, end, sl);
        if (r != 0) break;
        /* sleep until a leader wakes us or poll_ms passes (then we try sync_mu again and
         * replace a dead standby: the bound on a dead leader's stall without a standby) */
        if (futex_wait(slot_word(h, (uint32_t)sl), SLOT_WAITING, h->poll_ms) == -ETIMEDOUT) {
            count(h, C_TIMEOUTS);
            standby_check(h);
        }
    }
    if (sl >= 0) slot_free(h, sl);
    return r < 0 ? r : 0;
}

int au_shm_commit(au_shm *h, int fd, const uint8_t *buf, uint32_t len, uint64_t *end)
{
    int r = au_shm_append(h, fd, buf, len, end);
    if (r < 0) return r;
    return au_shm_wait_synced(h, fd, *end);
}

void au_shm_info(au_shm *h, au_shm_stats *s)
{
    s->generation = *U64(h, OFF_GENERATION);
    s->write_end = ld(U64(h, OFF_WRITE_END));
    s->writing_end = ld(U64(h, OFF_WRITING_END));
    s->synced_end = ld(U64(h, OFF_SYNCED_END));
    s->failed = __atomic_load_n(I32(h, OFF_FAILED), __ATOMIC_ACQUIRE);
    s->leader_pid = __atomic_load_n(U32(h, OFF_LEADER_PID), __ATOMIC_RELAXED);
    s->standby_pid = __atomic_load_n(U32(h, OFF_STANDBY), __ATOMIC_RELAXED);
    s->pad_ = 0;
    uint64_t c[8];
    for (int i = 0; i < 8; i++)
        c[i] = __atomic_load_n(U64(h, OFF_COUNTERS + 8 * i), __ATOMIC_RELAXED);
    s->fdatasyncs = c[C_FDATASYNCS];
    s->appends = c[C_COMMITS];
    s->covered = c[C_COVERED];
    s->wakeups = c[C_WAKEUPS];
    s->owner_died = c[C_OWNER_DIED];
    s->leader_died = c[C_LEADER_DIED];
    s->timeouts = c[C_TIMEOUTS];
    s->slot_reclaims = c[C_SLOT_RECLAIMS];
    s->waiting = 0;
    for (uint32_t i = 0; i < AU_SHM_SLOTS; i++)
        if (__atomic_load_n(slot_pid(h, i), __ATOMIC_RELAXED)) s->waiting++;
}

/* Tests only: take sync_mu and keep it (as a leader stuck in, or killed during, fdatasync). */
int au_shm_test_hold_sync(au_shm *h)
{
    int r = pthread_mutex_lock(SYNC_MU(h));
    if (r == EOWNERDEAD) pthread_mutex_consistent(SYNC_MU(h));
    else if (r) return -r;
    __atomic_store_n(U32(h, OFF_LEADER_PID), (uint32_t)h->pid, __ATOMIC_RELAXED);
    return 0;
}

/* Tests only: finish a sync started with au_shm_test_hold_sync as a leader would, with an
 * explicit `target` (<= write_end): fdatasync, publish synced_end, unlock, wake. */
int au_shm_test_finish_sync(au_shm *h, int fd, uint64_t target)
{
    if (target > ld(U64(h, OFF_WRITE_END))) return AU_E_INVAL;
    int s = au_fdatasync(fd);
    if (s == 0) {
        count(h, C_FDATASYNCS);
        if (target > ld(U64(h, OFF_SYNCED_END))) st(U64(h, OFF_SYNCED_END), target);
    }
    release_sync(h);
    return s;
}

/* ---- the log's positions (shared mode of aurora_log.local.log): a position is
 * seg_first_lsn << 32 | offset in that segment, so one u64 orders positions across
 * segments and is read atomically (no seqlock needed for the triple of the draft layout) */

void au_shm_position(au_shm *h, uint64_t *write_end, uint64_t *writing_end,
                     uint64_t *next_lsn, uint64_t *synced_end)
{
    /* write_end is stored last by a publish (release): read it first, then next_lsn; the
     * pair is exact under append_mu, a hint outside it */
    *write_end = ld(U64(h, OFF_WRITE_END));
    *next_lsn = ld(U64(h, OFF_NEXT_LSN));
    *writing_end = ld(U64(h, OFF_WRITING_END));
    *synced_end = ld(U64(h, OFF_SYNCED_END));
}

uint64_t au_shm_next_lsn(au_shm *h) { return ld(U64(h, OFF_NEXT_LSN)); }
uint64_t au_shm_write_end(au_shm *h) { return ld(U64(h, OFF_WRITE_END)); }
uint64_t au_shm_synced_end(au_shm *h) { return ld(U64(h, OFF_SYNCED_END)); }
uint64_t au_shm_writing_end(au_shm *h) { return ld(U64(h, OFF_WRITING_END)); }

int au_shm_failed(au_shm *h) { return __atomic_load_n(I32(h, OFF_FAILED), __ATOMIC_ACQUIRE); }

void au_shm_set_failed(au_shm *h, int err)
{
    int32_t zero = 0;
    __atomic_compare_exchange_n(I32(h, OFF_FAILED), &zero, err, 0, __ATOMIC_SEQ_CST,
                                __ATOMIC_RELAXED);
}

uint32_t au_shm_append_seq(au_shm *h)
{
    return __atomic_load_n(U32(h, OFF_APPEND_SEQ), __ATOMIC_SEQ_CST);
}

/* Sleep (GIL dropped) until some process publishes a batch after `seen` was read, or `ms`
 * pass. 0 or -ETIMEDOUT. */
int au_shm_wait_append(au_shm *h, uint32_t seen, uint32_t ms)
{
    int r = check(h);
    if (r) return r;
    /* Dekker with publish(): count in, then recheck the word; a publisher bumps the word,
     * then reads the count, so one of the two sees the other (no lost wake-up) */
    __atomic_fetch_add(U32(h, OFF_APPEND_WAITERS), 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(U32(h, OFF_APPEND_SEQ), __ATOMIC_SEQ_CST) != seen) r = 0;
    else r = futex_wait(U32(h, OFF_APPEND_SEQ), seen, ms);
    __atomic_fetch_sub(U32(h, OFF_APPEND_WAITERS), 1, __ATOMIC_SEQ_CST);
    return r == -EAGAIN || r == -EINTR ? 0 : r;
}

/* Under append_mu: mark the end of what is about to be written (a batch, or a roll: then a
 * position in the next segment), so that a holder dying before the publish is repaired. */
void au_shm_set_writing(au_shm *h, uint64_t writing_end) { st(U64(h, OFF_WRITING_END), writing_end); }

/* Under append_mu, after EOWNERDEAD within one segment: zero the dead holder's unpublished
 * bytes [write_end, writing_end) of `fd` (the newest segment), so it is again "batches, then
 * zeros" (FORMAT.md). */
int au_shm_zero_tail(au_shm *h, int fd)
{
    uint64_t w = ld(U64(h, OFF_WRITE_END)), wi = ld(U64(h, OFF_WRITING_END));
    static const uint8_t zeros[4096];
    if ((wi >> 32) == (w >> 32)) {
        while (wi > w) {
            size_t k = wi - w > sizeof zeros ? sizeof zeros : (size_t)(wi - w);
            int64_t r = au_pwrite_full(fd, zeros, k, (int64_t)(w & 0xffffffffu));
            if (r < 0) return (int)r;
            w += k;
        }
    }
    st(U64(h, OFF_WRITING_END), ld(U64(h, OFF_WRITE_END)));
    return 0;
}

/* After a publish: bump append_seq and wake the claims asleep on it, if any (a futex_wake
 * costs a syscall; most publishes have nobody asleep). */
static void publish_seq(au_shm *h)
{
    __atomic_fetch_add(U32(h, OFF_APPEND_SEQ), 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(U32(h, OFF_APPEND_WAITERS), __ATOMIC_SEQ_CST))
        futex_wake(U32(h, OFF_APPEND_SEQ), INT_MAX);
}

/* Under append_mu: frame records first_lsn.. (n of them; types, lens, concatenated data) as
 * one batch (FORMAT.md "Batches"; durable_end = `durable_off`), pwrite it at the page's
 * write position in `fd` (the newest segment), publish position and next_lsn, wake
 * au_shm_wait_append sleepers. *end = the new position. The caller checked that the batch
 * fits the segment (else it rolled). AU_E_INVAL if first_lsn is not the page's next_lsn. */
int au_shm_write_batch(au_shm *h, int fd, uint64_t first_lsn, uint32_t n, const uint8_t *types,
                       const uint32_t *lens, const uint8_t *data, uint64_t durable_off,
                       uint64_t *end)
{
    int r = check(h);
    if (r) return r;
    if (first_lsn != ld(U64(h, OFF_NEXT_LSN)) || n == 0) return AU_E_INVAL;
    size_t total = AU_BATCH_HDR;
    for (uint32_t i = 0; i < n; i++) total += AU_REC_HDR + (size_t)lens[i];
    size_t blen = (total + 7) & ~(size_t)7;
    if (blen > AU_MAX_BATCH) return AU_E_INVAL;
    uint8_t small[4096];      /* most batches (one claim, one enqueue): no malloc */
    uint8_t *buf = blen <= sizeof small ? small : malloc(blen);
    if (!buf) return -ENOMEM;
    memset(buf, 0, blen);            /* reserved bytes and the padding are zeros */
    size_t p = AU_BATCH_HDR, d = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint8_t *f = buf + p;
        uint64_t lsn = first_lsn + i;
        f[0] = (uint8_t)lens[i]; f[1] = (uint8_t)(lens[i] >> 8);
        f[2] = (uint8_t)(lens[i] >> 16); f[3] = (uint8_t)(lens[i] >> 24);
        for (int b = 0; b < 8; b++) f[8 + b] = (uint8_t)(lsn >> (8 * b));
        f[16] = types[i];
        memcpy(f + AU_REC_HDR, data + d, lens[i]);
        uint32_t c = au_record_crc(types[i], lsn, data + d, lens[i]);
        f[4] = (uint8_t)c; f[5] = (uint8_t)(c >> 8); f[6] = (uint8_t)(c >> 16);
        f[7] = (uint8_t)(c >> 24);
        p += AU_REC_HDR + lens[i];
        d += lens[i];
    }
    au_batch_header(buf, (uint32_t)blen, first_lsn, n, 0, durable_off);
    uint64_t pos = ld(U64(h, OFF_WRITE_END));
    st(U64(h, OFF_WRITING_END), pos + blen);
    int64_t w = au_pwrite_full(fd, buf, blen, (int64_t)(pos & 0xffffffffu));
    if (buf != small) free(buf);
    if (w < 0) {
        /* nothing published; zero what may have landed before anyone writes after it */
        au_shm_zero_tail(h, fd);
        return (int)w;
    }
    st(U64(h, OFF_NEXT_LSN), first_lsn + n);
    st(U64(h, OFF_WRITE_END), pos + blen);
    st(U64(h, OFF_WRITING_END), pos + blen);
    count(h, C_COMMITS);
    publish_seq(h);
    *end = pos + blen;
    /* still under append_mu (nobody else writes the segment): zeros ahead of the end of
     * data (FORMAT.md "Preallocation"), past the published position, so a reader sees
     * zeros there either way; a failure is ignored (the next batch lands in a hole) */
    (void)au_fill_ahead(fd, pos & 0xffffffffu, (pos & 0xffffffffu) + blen, 0);
    return 0;
}

/* A segment roll, under append_mu: take sync_mu blocking (a leader in flight finishes
 * first; a dead one's lock is taken over), so no leader reads a position in the next
 * segment and syncs the old file. 0 or < 0. */
int au_shm_roll_begin(au_shm *h)
{
    int r = check(h);
    if (r) return r;
    r = took_sync(h, pthread_mutex_lock(SYNC_MU(h)));
    return -r;
}

/* End a roll begun with au_shm_roll_begin: the old segment was fdatasynced and sealed, the
 * new one is durable; publish `pos` (the new segment's first batch position) as written and
 * synced, release sync_mu and wake whoever the roll's fdatasync covered. */
uint32_t au_shm_roll_seq(au_shm *h)
{
    return __atomic_load_n(U32(h, OFF_ROLL_SEQ), __ATOMIC_ACQUIRE);
}

void au_shm_roll_end(au_shm *h, uint64_t pos)
{
    __atomic_fetch_add(U32(h, OFF_ROLL_SEQ), 1, __ATOMIC_SEQ_CST);
    st(U64(h, OFF_WRITE_END), pos);
    st(U64(h, OFF_WRITING_END), pos);
    if (pos > ld(U64(h, OFF_SYNCED_END))) st(U64(h, OFF_SYNCED_END), pos);
    release_sync(h);
}

/* Give up a roll (an error): release sync_mu without publishing anything. */
void au_shm_roll_abort(au_shm *h) { release_sync(h); }

/* ---- the fast path (docs/MULTIPROCESS.md "The fast path"): one call that takes
 * append_mu without blocking, checks that nothing unusual is pending, writes one batch,
 * publishes and unlocks. It never waits, so a caller may keep its GIL around it, and the
 * lock is never held across Python code. Anything unusual (a dead holder's tail to
 * repair, a roll since the caller opened its fd, a batch that needs a roll, a failed
 * log) answers AU_SHM_SLOW with nothing done: the caller takes the locking path, which
 * handles each. With t->expect_lsn != 0 the append is conditional: it happens only if
 * the page's next_lsn is still expect_lsn, i.e. nobody appended since the caller's state
 * was folded to it, so a record decided on that state is decided on the newest state
 * (invariant I7) though the decision was made before the lock was taken. */
int au_shm_append_try(au_shm *h, int fd, uint64_t seg_first, uint64_t seg_size,
                      uint32_t roll_seq, uint64_t expect_lsn, uint32_t n, const uint8_t *types,
                      const uint32_t *lens, const uint8_t *data, uint64_t *out)
{
    int r = check(h);
    if (r) return r;
    /* a cheap refusal before touching the lock (a hint; rechecked under it) */
    if (expect_lsn && ld(U64(h, OFF_NEXT_LSN)) != expect_lsn) return AU_SHM_MOVED;
    r = pthread_mutex_trylock(APPEND_MU(h));
    if (r == EBUSY) return AU_SHM_BUSY;
    if (r == EOWNERDEAD) {
        /* consistent again; the dead holder's tail (writing_end != write_end) is left to
         * the locking path, which every holder takes when it sees writing_end != write_end */
        pthread_mutex_consistent(APPEND_MU(h));
        count(h, C_OWNER_DIED);
    } else if (r) {
        return -r;
    }
    uint64_t write = ld(U64(h, OFF_WRITE_END)), next = ld(U64(h, OFF_NEXT_LSN));
    size_t total = AU_BATCH_HDR;
    for (uint32_t i = 0; i < n; i++) total += AU_REC_HDR + (size_t)lens[i];
    uint64_t blen = (total + 7) & ~(uint64_t)7;
    if (expect_lsn && next != expect_lsn) {
        r = AU_SHM_MOVED;
    } else if (n == 0 || __atomic_load_n(I32(h, OFF_FAILED), __ATOMIC_ACQUIRE) ||
               ld(U64(h, OFF_WRITING_END)) != write || (write >> 32) != seg_first ||
               __atomic_load_n(U32(h, OFF_ROLL_SEQ), __ATOMIC_ACQUIRE) != roll_seq ||
               (write & 0xffffffffu) + blen + AU_SEG_HDR > seg_size ||
               next + n > AU_SHM_MAX_LSN) {
        r = AU_SHM_SLOW;
    } else {
        /* durable_end (FORMAT.md): the synced position's offset when it lies in this
         * segment, else the segment's first batch (read under append_mu: <= our offset) */
        uint64_t synced = ld(U64(h, OFF_SYNCED_END));
        uint64_t durable_off = (synced >> 32) == seg_first ? synced & 0xffffffffu : AU_SEG_HDR;
        out[0] = next;
        r = au_shm_write_batch(h, fd, next, n, types, lens, data, durable_off, &out[1]);
    }
    au_shm_unlock(h);
    return r;
}

int au_shm_append_try1(au_shm *h, int fd, uint64_t seg_first, uint64_t seg_size,
                       uint32_t roll_seq, uint64_t expect_lsn, uint8_t type,
                       const char *payload, uint32_t len, uint64_t *out)
{
    return au_shm_append_try(h, fd, seg_first, seg_size, roll_seq, expect_lsn, 1, &type, &len,
                             (const uint8_t *)payload, out);
}
