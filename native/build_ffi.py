"""cffi build script: compiles native/*.c into the extension module `aurora_log.local._native`.

Used by setup.py (`cffi_modules=["native/build_ffi.py:ffibuilder"]`) and runnable directly
(`python native/build_ffi.py` builds in place for development).

Flags: -O2 -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -pthread. sys.c alone defines
_DEFAULT_SOURCE (glibc hides flock() and fdatasync() prototypes under strict POSIX/C11);
nothing is compiled with -march=native: the hardware crc32c paths carry target attributes
and are chosen at run time.
"""

import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = ["crc32c.c", "sys.c", "format.c", "writer.c", "writer_append.c", "writer_commit.c",
           "writer_segment.c", "writer_threads.c", "shm.c", "idindex.c",
           "enqrun.c", "columns.c"]

HEADER = os.path.join(HERE, "aurora.h")


def header_cdef(path: str) -> str:
    """aurora.h as cffi's cdef wants it: no comments, include guard or #includes, and every
    #define NAME value turned into `#define NAME ...` (cffi asks the compiler for values).
    One source of truth for the C API: the header."""
    text = re.sub(r"/\*.*?\*/", "", open(path).read(), flags=re.S)
    out = []
    for line in text.splitlines():
        m = re.match(r"\s*#\s*define\s+(AU_\w+)\s+\S", line)
        if m:
            out.append(f"#define {m.group(1)} ...")
        elif not line.lstrip().startswith("#"):
            out.append(line)
    return "\n".join(out)


# fault injection (aurora_log/testing/faults.py): Python implementations of the table entries
PYTHON_CALLBACKS = r"""
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
ffibuilder.cdef(header_cdef(HEADER) + PYTHON_CALLBACKS)
ffibuilder.set_source(
    "aurora_log.local._native",
    '#include "aurora.h"\n',
    sources=[os.path.relpath(os.path.join(HERE, s)) for s in SOURCES],
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=["-O2", "-std=c11", "-D_POSIX_C_SOURCE=200809L", "-Wall", "-Wextra",
                        "-pthread"],
    extra_link_args=["-pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=os.path.join(HERE, ".."), verbose=True)
