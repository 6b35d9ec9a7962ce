"""cffi builder: compiles every native/src/*.c into the extension module qkdd._native.

Each public header in native/include/ marks the declarations cffi should see between the lines
`/* cffi:begin */` and `/* cffi:end */`; everything outside (include guards, includes, inline helpers)
is for the C compiler only. Adding a kernel family means adding a header and a source file; this
script needs no change.
"""
from __future__ import annotations

import pathlib
import re

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
INCLUDE = HERE / "include"
SRC = HERE / "src"
_CDEF_BLOCK = re.compile(r"/\* cffi:begin \*/(.*?)/\* cffi:end \*/", re.S)

# Portable flags only: kernels that want AVX2/AVX-512/PCLMUL compile those paths with target
# attributes and select them at run time (see bits.h: qkd_cpu_features).
CFLAGS = ["-std=c11", "-O3", "-fno-strict-aliasing", "-Wall", "-Wextra", "-Werror",
          "-Wno-unused-parameter", "-D_GNU_SOURCE"]


def _cdef_text() -> str:
    blocks = []
    for header in sorted(INCLUDE.glob("*.h")):
        blocks.extend(_CDEF_BLOCK.findall(header.read_text()))
    return "\n".join(blocks)


def _sources() -> list[str]:
    # Paths relative to the project root, where setuptools runs the build.
    root = HERE.parent
    return [str(p.relative_to(root)) for p in sorted(SRC.glob("*.c"))]


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "qkdd._native",
    "\n".join(f'#include "{h.name}"' for h in sorted(INCLUDE.glob("*.h"))),
    sources=_sources(),
    include_dirs=[str(INCLUDE.relative_to(HERE.parent))],
    extra_compile_args=CFLAGS,
    libraries=["m"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
