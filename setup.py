"""Build hook: cffi compiles native/ into qkdd._native (API mode, out-of-line)."""
from setuptools import setup

setup(cffi_modules=["native/build_native.py:ffibuilder"])
