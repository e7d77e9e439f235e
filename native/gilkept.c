/* aurora_log.local._gilkept: the C core's hot calls that must KEEP the GIL, as a CPython
 * extension module (stable ABI, METH_FASTCALL) instead of ctypes.PyDLL.
 *
 * Why: the calls below never wait (a trylock, one pwrite, an atomic load), and the queue
 * makes them under its own lock, so dropping the GIL around them (as cffi does) only hands
 * it to threads that then queue on that lock (aurora_log/local/_binding.py). ctypes keeps
 * the GIL but converts each argument through its generic machinery: ~1 us for one call
 * of ten arguments, more than the C work of a claim's append. Here an argument costs one
 * PyLong conversion.
 *
 * One C core, one syscall table: this module holds no copy of the core. It calls the very
 * functions of the cffi module aurora_log.local._native through pointers that
 * aurora_log/local/_binding.py hands to bind() at import (ffi.addressof(lib, name)), so
 * fault injection and crash simulation (native/sys.c's table) see these calls too.
 *
 * Nothing here allocates per call except the result objects, and no Python code runs
 * between a lock and its unlock (they are both inside one core call). */
#ifndef Py_LIMITED_API
#define Py_LIMITED_API 0x030B0000
#endif
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>

/* the cores' signatures (native/aurora.h); opaque handles are void * here */
typedef uint64_t (*next_lsn_fn)(void *h);
typedef int (*append_try1_fn)(void *h, int fd, uint64_t seg_first, uint64_t seg_size,
                              uint32_t roll_seq, uint64_t expect_lsn, uint8_t type,
                              const char *payload, uint32_t len, uint64_t *out);
typedef int (*append_now1_fn)(void *w, uint64_t lsn, uint8_t type, const uint8_t *payload,
                              uint32_t len, int write);
typedef int (*h_int_fn)(void *h);
typedef uint32_t (*h_u32_fn)(void *h);
typedef void (*h_void_fn)(void *h);
typedef int (*write_batch_fn)(void *h, int fd, uint64_t first_lsn, uint32_t n,
                              const uint8_t *types, const uint32_t *lens, const uint8_t *data,
                              uint64_t durable_off, uint64_t *end);

/* Set once by bind(); every call refuses to run before (a RuntimeError, never a NULL
 * call). Process-wide like the core they point into. */
static next_lsn_fn p_next_lsn;
static append_try1_fn p_append_try1;
static append_now1_fn p_append_now1;

/* The append lock's calls for shared mode's locking path (docs/MULTIPROCESS.md, "The GIL
 * and append_mu": a thread holding append_mu never waits for its own GIL, so every call
 * made while it is held keeps the GIL). Set by bind_locking(). */
static h_int_fn p_trylock, p_failed;
static h_void_fn p_unlock;
static h_u32_fn p_unlock_seq, p_roll_seq;
static next_lsn_fn p_write_end, p_writing_end, p_synced_end;
static write_batch_fn p_write_batch;

/* An address (a handle, a function) from a Python int: 0 is refused. -1 + exception. */
static int as_ptr(PyObject *o, void **out)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    if (v == 0) {
        PyErr_SetString(PyExc_ValueError, "a null address");
        return -1;
    }
    *out = (void *)(uintptr_t)v;
    return 0;
}

/* A u64 argument. -1 + exception (OverflowError for a negative or too large int). */
static int as_u64(PyObject *o, uint64_t *out)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    *out = (uint64_t)v;
    return 0;
}

/* A record type (1..255, as FORMAT.md has them) and its payload (exactly bytes, at most
 * 4 GiB - 1: the caller checked max_record_bytes). -1 + exception. */
static int as_record(PyObject *t, PyObject *p, uint8_t *type, char **data, uint32_t *len)
{
    long v = PyLong_AsLong(t);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (v < 1 || v > 255) {
        PyErr_SetString(PyExc_ValueError, "a record type is 1..255");
        return -1;
    }
    Py_ssize_t n;
    if (!PyBytes_CheckExact(p)) {
        PyErr_SetString(PyExc_TypeError, "a record payload is bytes");
        return -1;
    }
    if (PyBytes_AsStringAndSize(p, data, &n) < 0) return -1;
    if ((uint64_t)n > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "a record payload is below 4 GiB");
        return -1;
    }
    *type = (uint8_t)v;
    *len = (uint32_t)n;
    return 0;
}

static int bound(void)
{
    if (p_next_lsn && p_append_try1 && p_append_now1) return 1;
    PyErr_SetString(PyExc_RuntimeError, "aurora_log.local._gilkept is not bound to the core");
    return 0;
}

/* bind(next_lsn, append_try1, append_now1): the addresses of au_shm_next_lsn,
 * au_shm_append_try1 and au_append_now1 in aurora_log.local._native. Binding again (a
 * reload) replaces them: they are the same functions of the same loaded module. */
static PyObject *gk_bind(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    void *a, *b, *c;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "bind() takes 3 addresses");
        return NULL;
    }
    if (as_ptr(args[0], &a) || as_ptr(args[1], &b) || as_ptr(args[2], &c)) return NULL;
    /* through uintptr_t: ISO C has no object-to-function pointer conversion */
    p_next_lsn = (next_lsn_fn)(uintptr_t)a;
    p_append_try1 = (append_try1_fn)(uintptr_t)b;
    p_append_now1 = (append_now1_fn)(uintptr_t)c;
    Py_RETURN_NONE;
}

/* shm_next_lsn(h) -> int: au_shm_next_lsn (one atomic load of the page); a hint outside
 * the append lock, exact under it (shm.c). */
static PyObject *gk_shm_next_lsn(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    void *h;
    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "shm_next_lsn() takes 1 argument");
        return NULL;
    }
    if (!bound() || as_ptr(args[0], &h)) return NULL;
    return PyLong_FromUnsignedLongLong(p_next_lsn(h));
}

/* shm_append_try1(h, fd, seg_first, seg_size, roll_seq, expect_lsn, rtype, payload)
 * -> (first LSN, position after the batch) when appended, else the int return code of
 * au_shm_append_try1 (AU_SHM_BUSY / MOVED / SLOW: nothing done; < 0: the write failed,
 * nothing published). The invariant is the core's (shm.c, "the fast path"): the append
 * lock is taken without waiting and released in the same call, and with expect_lsn != 0
 * the record is written only if the page's next LSN is still expect_lsn (I7). */
static PyObject *gk_shm_append_try1(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    void *h;
    uint64_t seg_first, seg_size, roll_seq, expect;
    uint8_t type;
    char *data;
    uint32_t len;
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "shm_append_try1() takes 8 arguments");
        return NULL;
    }
    if (!bound() || as_ptr(args[0], &h)) return NULL;
    long fd = PyLong_AsLong(args[1]);
    if (fd == -1 && PyErr_Occurred()) return NULL;
    if (fd < 0 || fd > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "not a file descriptor");
        return NULL;
    }
    if (as_u64(args[2], &seg_first) || as_u64(args[3], &seg_size) ||
        as_u64(args[4], &roll_seq) || as_u64(args[5], &expect) ||
        as_record(args[6], args[7], &type, &data, &len))
        return NULL;
    if (roll_seq > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "roll_seq is a u32");
        return NULL;
    }
    uint64_t out[2];
    int rc = p_append_try1(h, (int)fd, seg_first, seg_size, (uint32_t)roll_seq, expect, type,
                           data, len, out);
    if (rc != 0) return PyLong_FromLong(rc);
    PyObject *first = PyLong_FromUnsignedLongLong(out[0]);
    PyObject *end = first ? PyLong_FromUnsignedLongLong(out[1]) : NULL;
    PyObject *res = end ? PyTuple_Pack(2, first, end) : NULL;
    Py_XDECREF(first);
    Py_XDECREF(end);
    /* appended but no memory for the answer: the record is on the page and in the file;
     * MemoryError propagates and the queue's caller sees a failed call (as for any
     * MemoryError after a write; the record stays, at-least-once) */
    return res;
}

/* append_now1(w, lsn, rtype, payload, write) -> int: au_append_now1 (exclusive mode's
 * one-record append; never waits on a condition: 0, AU_QUEUED, AU_AGAIN or < 0). The
 * caller reserved `lsn` (writer.c's ordering invariant is the core's). */
static PyObject *gk_append_now1(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    void *w;
    uint64_t lsn;
    uint8_t type;
    char *data;
    uint32_t len;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "append_now1() takes 5 arguments");
        return NULL;
    }
    if (!bound() || as_ptr(args[0], &w) || as_u64(args[1], &lsn) ||
        as_record(args[2], args[3], &type, &data, &len))
        return NULL;
    int write = PyObject_IsTrue(args[4]);
    if (write < 0) return NULL;
    return PyLong_FromLong(p_append_now1(w, lsn, type, (const uint8_t *)data, len, write));
}

static int locking_bound(void)
{
    if (p_trylock && p_unlock && p_unlock_seq && p_write_end && p_writing_end && p_synced_end &&
        p_roll_seq && p_failed && p_write_batch)
        return 1;
    PyErr_SetString(PyExc_RuntimeError, "aurora_log.local._gilkept: the locking calls are "
                    "not bound");
    return 0;
}

/* bind_locking(trylock, unlock, unlock_seq, write_end, writing_end, synced_end, roll_seq,
 * failed, write_batch): the addresses of the au_shm_* functions of those names. */
static PyObject *gk_bind_locking(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    void *a[9];
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "bind_locking() takes 9 addresses");
        return NULL;
    }
    for (int i = 0; i < 9; i++)
        if (as_ptr(args[i], &a[i])) return NULL;
    p_trylock = (h_int_fn)(uintptr_t)a[0];
    p_unlock = (h_void_fn)(uintptr_t)a[1];
    p_unlock_seq = (h_u32_fn)(uintptr_t)a[2];
    p_write_end = (next_lsn_fn)(uintptr_t)a[3];
    p_writing_end = (next_lsn_fn)(uintptr_t)a[4];
    p_synced_end = (next_lsn_fn)(uintptr_t)a[5];
    p_roll_seq = (h_u32_fn)(uintptr_t)a[6];
    p_failed = (h_int_fn)(uintptr_t)a[7];
    p_write_batch = (write_batch_fn)(uintptr_t)a[8];
    Py_RETURN_NONE;
}

/* The one-handle calls: a handle in, a number out (or None for unlock). None of them
 * blocks: a trylock, an unlock, atomic loads of the page (shm.c). */
static int one_handle(PyObject *const *args, Py_ssize_t nargs, void **h)
{
    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "takes 1 argument (a handle)");
        return -1;
    }
    if (!locking_bound()) return -1;
    return as_ptr(args[0], h);
}

#define U64_CALL(name, fn)                                                                  \
    static PyObject *name(PyObject *self, PyObject *const *args, Py_ssize_t nargs)         \
    {                                                                                       \
        (void)self;                                                                         \
        void *h;                                                                            \
        if (one_handle(args, nargs, &h)) return NULL;                                       \
        return PyLong_FromUnsignedLongLong((unsigned long long)fn(h));                      \
    }
#define INT_CALL(name, fn)                                                                  \
    static PyObject *name(PyObject *self, PyObject *const *args, Py_ssize_t nargs)         \
    {                                                                                       \
        (void)self;                                                                         \
        void *h;                                                                            \
        if (one_handle(args, nargs, &h)) return NULL;                                       \
        return PyLong_FromLong(fn(h));                                                      \
    }
INT_CALL(gk_trylock, p_trylock)
INT_CALL(gk_failed, p_failed)
U64_CALL(gk_unlock_seq, p_unlock_seq)
U64_CALL(gk_roll_seq, p_roll_seq)
U64_CALL(gk_write_end, p_write_end)
U64_CALL(gk_writing_end, p_writing_end)
U64_CALL(gk_synced_end, p_synced_end)

static PyObject *gk_unlock(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    void *h;
    if (one_handle(args, nargs, &h)) return NULL;
    p_unlock(h);
    Py_RETURN_NONE;
}

/* write_batch(h, fd, first_lsn, n, types, lens, data, durable_off, end) -> int:
 * au_shm_write_batch under append_mu (the caller holds it); types, lens, data and end are
 * addresses of buffers the caller keeps alive for the call (as the ctypes form takes
 * them). The invariant is the core's: first_lsn must be the page's next LSN. */
static PyObject *gk_write_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    void *h, *end;
    uint64_t first, n, durable, types, lens, data;   /* may be 0 for an empty buffer */
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "write_batch() takes 9 arguments");
        return NULL;
    }
    if (!locking_bound() || as_ptr(args[0], &h)) return NULL;
    long fd = PyLong_AsLong(args[1]);
    if (fd == -1 && PyErr_Occurred()) return NULL;
    if (fd < 0 || fd > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "not a file descriptor");
        return NULL;
    }
    if (as_u64(args[2], &first) || as_u64(args[3], &n) || as_u64(args[4], &types) ||
        as_u64(args[5], &lens) || as_u64(args[6], &data) || as_u64(args[7], &durable) ||
        as_ptr(args[8], &end))
        return NULL;
    if (n > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "n is a u32");
        return NULL;
    }
    return PyLong_FromLong(p_write_batch(h, (int)fd, first, (uint32_t)n,
                                         (const uint8_t *)(uintptr_t)types,
                                         (const uint32_t *)(uintptr_t)lens,
                                         (const uint8_t *)(uintptr_t)data, durable, end));
}

static PyMethodDef methods[] = {
    {"bind", (PyCFunction)(void (*)(void))gk_bind, METH_FASTCALL,
     "bind(next_lsn, append_try1, append_now1): the core's function addresses."},
    {"shm_next_lsn", (PyCFunction)(void (*)(void))gk_shm_next_lsn, METH_FASTCALL,
     "shm_next_lsn(h) -> the page's next LSN (au_shm_next_lsn), keeping the GIL."},
    {"shm_append_try1", (PyCFunction)(void (*)(void))gk_shm_append_try1, METH_FASTCALL,
     "shm_append_try1(h, fd, seg_first, seg_size, roll_seq, expect_lsn, rtype, payload)"
     " -> (first, end) or a return code (au_shm_append_try1), keeping the GIL."},
    {"append_now1", (PyCFunction)(void (*)(void))gk_append_now1, METH_FASTCALL,
     "append_now1(w, lsn, rtype, payload, write) -> au_append_now1's code, keeping the GIL."},
    {"bind_locking", (PyCFunction)(void (*)(void))gk_bind_locking, METH_FASTCALL,
     "bind_locking(...): the addresses of the append lock's au_shm_* calls."},
    {"trylock", (PyCFunction)(void (*)(void))gk_trylock, METH_FASTCALL, "au_shm_trylock(h)"},
    {"unlock", (PyCFunction)(void (*)(void))gk_unlock, METH_FASTCALL, "au_shm_unlock(h)"},
    {"unlock_seq", (PyCFunction)(void (*)(void))gk_unlock_seq, METH_FASTCALL,
     "au_shm_unlock_seq(h)"},
    {"write_end", (PyCFunction)(void (*)(void))gk_write_end, METH_FASTCALL,
     "au_shm_write_end(h)"},
    {"writing_end", (PyCFunction)(void (*)(void))gk_writing_end, METH_FASTCALL,
     "au_shm_writing_end(h)"},
    {"synced_end", (PyCFunction)(void (*)(void))gk_synced_end, METH_FASTCALL,
     "au_shm_synced_end(h)"},
    {"roll_seq", (PyCFunction)(void (*)(void))gk_roll_seq, METH_FASTCALL,
     "au_shm_roll_seq(h)"},
    {"failed", (PyCFunction)(void (*)(void))gk_failed, METH_FASTCALL, "au_shm_failed(h)"},
    {"write_batch", (PyCFunction)(void (*)(void))gk_write_batch, METH_FASTCALL,
     "au_shm_write_batch(h, fd, first_lsn, n, types, lens, data, durable_off, end)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_gilkept",
    "The C core's GIL-keeping hot calls (native/gilkept.c); bound to "
    "aurora_log.local._native by aurora_log.local._binding.",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__gilkept(void) { return PyModule_Create(&module); }
