"""Build script of pybpf's cffi extension, ``pybpf._native``.

The C declarations live in ``pybpf/_cdefs/``, one file per C area, joined here
in a fixed order.  ``shim.c`` is the C preamble: includes, version gates and
the few helpers that cdef cannot express.  ``uapi.h`` is both cdef text and C,
so the compiler checks the kernel ABI layouts the raw layer uses.

Run directly (``python build_ffi.py``) to build the module in place; pip runs
it through ``cffi_modules`` in pyproject/setup.
"""
from __future__ import annotations

import pathlib

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
CDEFS = HERE / "pybpf" / "_cdefs"

# Order matters: later areas use the types of earlier ones.
AREAS = ["common.h", "uapi.h", "object.h", "program.h", "map.h", "link.h", "btf.h", "ringbuf.h", "linker.h", "perfbuf.h"]


def _read(name: str) -> str:
    return (CDEFS / name).read_text()


ffibuilder = FFI()
for area in AREAS:
    ffibuilder.cdef(_read(area))

ffibuilder.set_source(
    "pybpf._native",
    "\n".join(_read(n) for n in ("shim.c", "uapi.h", "uapi_checks.c")),
    libraries=["bpf", "elf", "z"],
    extra_compile_args=["-O2", "-Wno-unused-function"],
)

if __name__ == "__main__":
    # Build in a scratch directory and move the module into place atomically:
    # processes that have the old module mapped keep a valid file.
    import glob
    import os
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pybpf-build-") as tmp:
        built = ffibuilder.compile(tmpdir=tmp, verbose=False)
        dest = HERE / "pybpf" / os.path.basename(built)
        staged = dest.with_name(dest.name + f".{os.getpid()}")
        shutil.copy2(built, staged)
        os.replace(staged, dest)
        for stale in glob.glob(str(HERE / "pybpf" / "_native.*.so")):
            if stale != str(dest):
                os.unlink(stale)
