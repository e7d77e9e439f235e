"""cffi build script: compiles native/*.c into the extension module `aurora_log._native`.

Used by setup.py (`cffi_modules=["native/build_ffi.py:ffibuilder"]`) and runnable directly
(`python native/build_ffi.py` builds in place for development).

Flags: -O2 -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -pthread. sys.c alone defines
_DEFAULT_SOURCE (glibc hides flock() and fdatasync() prototypes under strict POSIX/C11);
nothing is compiled with -march=native: the hardware crc32c paths carry target attributes
and are chosen at run time.
"""

import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = ["crc32c.c", "sys.c", "format.c", "writer.c"]

CDEF = r"""
#define AU_E_FAILED ...
#define AU_E_CLOSED ...
#define AU_E_INVAL ...
#define AU_E_TOOBIG ...
#define AU_SEG_HDR ...
#define AU_BATCH_HDR ...
#define AU_REC_HDR ...
#define AU_MAX_BATCH ...
#define AU_FLAG_SEAL ...
#define AU_MODE_SYNC ...
#define AU_MODE_INTERVAL ...
#define AU_MODE_OS ...
#define AU_SCAN_MORE ...
#define AU_SCAN_END ...
#define AU_SCAN_BAD ...

uint32_t au_crc32c(uint32_t crc, const void *buf, size_t len);
uint32_t au_crc32c_sw(uint32_t crc, const void *buf, size_t len);
uint32_t au_crc32c_hw(uint32_t crc, const void *buf, size_t len);
int au_crc32c_hw_available(void);
uint32_t au_crc_mask(uint32_t crc);
uint32_t au_crc_unmask(uint32_t masked);

struct au_sys {
    int (*open)(const char *path, int flags, int mode);
    int (*close)(int fd);
    int64_t (*pwrite)(int fd, const void *buf, size_t n, int64_t off);
    int64_t (*pread)(int fd, void *buf, size_t n, int64_t off);
    int (*fdatasync)(int fd);
    int (*fsync)(int fd);
    int (*ftruncate)(int fd, int64_t len);
    int (*rename)(const char *from, const char *to);
    int (*unlink)(const char *path);
    int (*mkdir)(const char *path, int mode);
    int (*flock)(int fd, int op);
};
extern struct au_sys au_sys;
extern const struct au_sys au_sys_default;

int au_open(const char *path, int flags, int mode);
int au_close(int fd);
int64_t au_pwrite_full(int fd, const void *buf, size_t n, int64_t off);
int64_t au_pread_full(int fd, void *buf, size_t n, int64_t off);
int au_fdatasync(int fd);
int au_fsync(int fd);
int au_ftruncate(int fd, int64_t len);
int au_rename(const char *from, const char *to);
int au_unlink(const char *path);
int au_mkdir(const char *path, int mode);
int au_flock(int fd, int op);
int au_fsync_dir(const char *path);
int64_t au_file_size(int fd);
int au_lock_ex_nb(void);
int au_o_cloexec(void);
int au_o_directory(void);

void au_segment_header_make(uint8_t *hdr32, uint64_t first_lsn, uint64_t size);
int au_segment_header_check(const uint8_t *hdr, size_t n, uint64_t *first_lsn,
                            uint64_t *size);
int au_segment_create(const char *wal_dir, uint64_t first_lsn, uint64_t size);
const char *au_reason(int reason);

typedef struct {
    uint64_t lsn;
    uint64_t off;
    uint32_t len;
    uint32_t type;
} au_rec;

typedef struct {
    uint64_t pos;
    uint64_t next_lsn;
    uint64_t limit;
    uint64_t rec_pos;
    uint32_t rec_left;
    uint32_t max_record;
    int32_t status;
    int32_t reason;
    uint64_t bad_off;
    uint64_t last_durable_end;
    uint64_t batches;
    uint32_t last_flags;
    uint32_t pad_;
} au_scan;

size_t au_scan_next(const uint8_t *buf, au_scan *s, au_rec *out, size_t cap);
int64_t au_first_nonzero(const uint8_t *buf, uint64_t from, uint64_t limit);
int64_t au_last_nonzero(const uint8_t *buf, uint64_t from, uint64_t limit);
int64_t au_find_durable_evidence(const uint8_t *buf, uint64_t limit, uint64_t x);

typedef struct au_writer au_writer;
typedef struct {
    uint64_t fdatasyncs, writes, rounds, batches, records, bytes, rolls;
} au_stats;

int au_writer_open(au_writer **out, const char *wal_dir, const char *seg_path,
                   uint64_t seg_first_lsn, uint64_t write_off, uint64_t file_size,
                   uint64_t next_lsn, uint64_t segment_bytes, uint32_t max_record,
                   int mode, uint32_t interval_ms);
int au_append(au_writer *w, uint32_t n, const uint8_t *types, const uint32_t *lens,
              const uint8_t *data, uint64_t *last_lsn);
int au_append1(au_writer *w, uint8_t type, const uint8_t *payload, uint32_t len,
               uint64_t *lsn);
int au_sync(au_writer *w, uint64_t lsn);
int au_write_through(au_writer *w, uint64_t lsn);
int au_flush(au_writer *w);
int au_writer_close(au_writer *w);
void au_writer_free(au_writer *w);
int au_writer_failed(au_writer *w);
void au_writer_stats(au_writer *w, au_stats *s);
void au_writer_position(au_writer *w, uint64_t *seg_first_lsn, uint64_t *write_off,
                        uint64_t *next_lsn, uint64_t *written_lsn);

/* fault injection (aurora_log/faults.py): Python implementations of the table entries */
extern "Python" int _au_py_open(const char *, int, int);
extern "Python" int _au_py_close(int);
extern "Python" int64_t _au_py_pwrite(int, const void *, size_t, int64_t);
extern "Python" int64_t _au_py_pread(int, void *, size_t, int64_t);
extern "Python" int _au_py_fdatasync(int);
extern "Python" int _au_py_fsync(int);
extern "Python" int _au_py_ftruncate(int, int64_t);
extern "Python" int _au_py_rename(const char *, const char *);
extern "Python" int _au_py_unlink(const char *);
extern "Python" int _au_py_mkdir(const char *, int);
extern "Python" int _au_py_flock(int, int);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "aurora_log._native",
    '#include "aurora.h"\n',
    sources=[os.path.relpath(os.path.join(HERE, s)) for s in SOURCES],
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=["-O2", "-std=c11", "-D_POSIX_C_SOURCE=200809L", "-Wall", "-Wextra",
                        "-pthread"],
    extra_link_args=["-pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=os.path.join(HERE, ".."), verbose=True)
