"""Build glue: cffi compiles the C core (native/) into aurora_log._native at install time."""
from setuptools import setup

setup(cffi_modules=["native/build_ffi.py:ffibuilder"])
