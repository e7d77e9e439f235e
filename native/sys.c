/* The syscall table (SQLite os_unix.c pattern). Every syscall the core makes goes through
 * `au_sys`, so tests can swap entries (aurora_log/testing/faults.py) to record operations and inject
 * EIO/ENOSPC, short writes and EINTR. The defaults are the plain syscalls. */
#define _DEFAULT_SOURCE /* flock(), fdatasync() prototypes with glibc */
#include "aurora.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

/* The default entries: the plain syscalls, adapted to the table's fixed-width types.
 * Retries, EINTR and errno handling live in the au_* helpers below, never here, so an
 * injected entry behaves exactly like the real one. open(2): mode counts with O_CREAT. */
static int d_open(const char *path, int flags, int mode) { return open(path, flags, (mode_t)mode); }
/* close(2) */
static int d_close(int fd) { return close(fd); }
/* pwrite(2): may write less than n */
static int64_t d_pwrite(int fd, const void *buf, size_t n, int64_t off)
{
    return pwrite(fd, buf, n, (off_t)off);
}
/* pread(2): may read less than n */
static int64_t d_pread(int fd, void *buf, size_t n, int64_t off)
{
    return pread(fd, buf, n, (off_t)off);
}
/* fdatasync(2): the segments' durability point */
static int d_fdatasync(int fd) { return fdatasync(fd); }
/* fsync(2): new files and directories */
static int d_fsync(int fd) { return fsync(fd); }
/* ftruncate(2) */
static int d_ftruncate(int fd, int64_t len) { return ftruncate(fd, (off_t)len); }
/* rename(2): atomic within one directory */
static int d_rename(const char *a, const char *b) { return rename(a, b); }
/* unlink(2) */
static int d_unlink(const char *p) { return unlink(p); }
/* mkdir(2) */
static int d_mkdir(const char *p, int mode) { return mkdir(p, (mode_t)mode); }
/* flock(2): the directory lock, one Log per directory */
static int d_flock(int fd, int op) { return flock(fd, op); }

/* au_sys is the table every au_* helper calls; tests point its entries at Python
 * (aurora_log/testing/faults.py) and back at the defaults kept in au_sys_default. */
const struct au_sys au_sys_default = {
    d_open, d_close, d_pwrite, d_pread, d_fdatasync, d_fsync,
    d_ftruncate, d_rename, d_unlink, d_mkdir, d_flock,
};
struct au_sys au_sys = {
    d_open, d_close, d_pwrite, d_pread, d_fdatasync, d_fsync,
    d_ftruncate, d_rename, d_unlink, d_mkdir, d_flock,
};

#define ERR(r) ((r) < 0 ? (errno ? -errno : -EIO) : (r))

/* open through the table, restarted on EINTR (nothing happened yet). The fd or -errno;
 * ERR turns a failure that left errno 0 (an injected entry) into -EIO. */
int au_open(const char *path, int flags, int mode)
{
    int r;
    do {
        errno = 0;
        r = au_sys.open(path, flags, mode);
    } while (r < 0 && errno == EINTR);
    return ERR(r);
}

/* close through the table, never retried: after EINTR the fd is gone and its number may
 * already belong to another thread's file. 0 or -errno. */
int au_close(int fd)
{
    /* never retry close (the fd may be reused); EINTR after close means it is closed */
    errno = 0;
    int r = au_sys.close(fd);
    if (r < 0 && errno == EINTR)
        return 0;
    return ERR(r);
}

/* Write all n bytes at off, continuing after short writes and EINTR. A write that makes
 * no progress is -ENOSPC, never an endless loop. On -errno a prefix may be written. */
int64_t au_pwrite_full(int fd, const void *buf, size_t n, int64_t off)
{
    const uint8_t *p = buf;
    size_t done = 0;
    while (done < n) {
        errno = 0;
        int64_t r = au_sys.pwrite(fd, p + done, n - done, off + (int64_t)done);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return errno ? -errno : -EIO;
        }
        if (r == 0)
            return -ENOSPC; /* no progress: treat as out of space, never loop forever */
        done += (size_t)r;
    }
    return (int64_t)done;
}

/* Read up to n bytes at off, continuing after short reads and EINTR; stops at EOF and
 * returns the count read, or -errno. */
int64_t au_pread_full(int fd, void *buf, size_t n, int64_t off)
{
    uint8_t *p = buf;
    size_t done = 0;
    while (done < n) {
        errno = 0;
        int64_t r = au_sys.pread(fd, p + done, n - done, off + (int64_t)done);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return errno ? -errno : -EIO;
        }
        if (r == 0)
            break; /* EOF */
        done += (size_t)r;
    }
    return (int64_t)done;
}

/* fsync/fdatasync: any failure (EINTR included) is final; never retried. */
int au_fdatasync(int fd) { errno = 0; int r = au_sys.fdatasync(fd); return ERR(r); }
/* As au_fdatasync, metadata included (new files, directories). */
int au_fsync(int fd) { errno = 0; int r = au_sys.fsync(fd); return ERR(r); }

/* ftruncate through the table, restarted on EINTR (a second truncate to the same length
 * changes nothing). */
int au_ftruncate(int fd, int64_t len)
{
    int r;
    do {
        errno = 0;
        r = au_sys.ftruncate(fd, len);
    } while (r < 0 && errno == EINTR);
    return ERR(r);
}

/* rename, one attempt: a retry after a rename that did happen would fail with ENOENT. */
int au_rename(const char *a, const char *b) { errno = 0; int r = au_sys.rename(a, b); return ERR(r); }
/* unlink, one attempt (a retry could report ENOENT for its own first success). */
int au_unlink(const char *p) { errno = 0; int r = au_sys.unlink(p); return ERR(r); }
/* mkdir, one attempt (a retry could report EEXIST for its own first success). */
int au_mkdir(const char *p, int mode) { errno = 0; int r = au_sys.mkdir(p, mode); return ERR(r); }

/* flock through the table, restarted on EINTR; with LOCK_NB a held lock is -EWOULDBLOCK
 * at once. */
int au_flock(int fd, int op)
{
    int r;
    do {
        errno = 0;
        r = au_sys.flock(fd, op);
    } while (r < 0 && errno == EINTR);
    return ERR(r);
}

/* fsync a directory, so a create or rename in it is durable. The fsync's error comes
 * first, then close's; the fd is closed either way. */
int au_fsync_dir(const char *path)
{
    int fd = au_open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
    if (fd < 0)
        return fd;
    int r = au_fsync(fd);
    int c = au_close(fd);
    return r < 0 ? r : c;
}

/* fstat's size, or -errno. Not in the table: it changes nothing, so there is nothing to
 * inject. */
int64_t au_file_size(int fd)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return -errno;
    return (int64_t)st.st_size;
}

/* The platform's flag values, for Python: cffi sees only the AU_* macros of aurora.h. */
int au_lock_ex_nb(void) { return LOCK_EX | LOCK_NB; }
/* O_CLOEXEC, for Python */
int au_o_cloexec(void) { return O_CLOEXEC; }
/* O_DIRECTORY, for Python */
int au_o_directory(void) { return O_DIRECTORY; }
