"""Build hook: setuptools needs setup() for cffi's ``cffi_modules``, and
the wheel carries the VM harness's data (``vm/``: the kernel matrix and the
guest scripts) as ``pybpf/vm/data``. All metadata lives in pyproject.toml."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

VM_DATA = ("kernels.toml", "init", "guest.sh")


class BuildPyWithVMData(build_py):
    """Copy vm/* next to the harness in the built package. (An editable
    install finds vm/ beside the package instead.)"""

    def run(self) -> None:
        super().run()
        src = Path(__file__).resolve().parent / "vm"
        dst = Path(self.build_lib) / "pybpf" / "vm" / "data"
        dst.mkdir(parents=True, exist_ok=True)
        for name in VM_DATA:
            shutil.copy2(src / name, dst / name)


setup(cffi_modules=["build_ffi.py:ffibuilder"], cmdclass={"build_py": BuildPyWithVMData})
