"""Build glue: cffi compiles the C core (native/) into aurora_log.local._native at install
time, and setuptools compiles native/gilkept.c into aurora_log.local._gilkept, the small
CPython extension that calls the same core functions keeping the GIL (the hot appends)."""
from setuptools import Extension, setup

GILKEPT = Extension(
    "aurora_log.local._gilkept",
    sources=["native/gilkept.c"],
    define_macros=[("Py_LIMITED_API", "0x030B0000")],
    py_limited_api=True,          # one .abi3.so for every CPython >= 3.11, as _native
    extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra"],
)

setup(cffi_modules=["native/build_ffi.py:ffibuilder"], ext_modules=[GILKEPT])
