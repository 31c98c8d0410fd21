"""`pip install .` (not editable): the wheel built from this tree carries
the compiled extension, the headers and examples users compile against,
the VM harness's data and the entry points, and the installed copy works
from outside the source tree against the real kernel."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _pip(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], capture_output=True,
                          text=True, timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    src = tmp_path_factory.mktemp("src") / "pybpf"
    # a clean copy of the tree (what `git archive` gives): no in-place build products
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        p = ROOT / f
        if p.is_file() and not p.name.startswith("_native"):
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            (src / f).write_bytes(p.read_bytes())
    r = _pip("wheel", "--no-deps", "-w", str(out), str(src))     # build isolation: what `pip install .` does
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (whl,) = out.glob("pybpf-*.whl")
    return whl


def test_wheel_carries_extension_data_and_entry_points(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert any(n.startswith("pybpf/_native.") and n.endswith(".so") for n in names), sorted(names)
    for need in ("pybpf/py.typed", "pybpf/include/pybpf.bpf.h", "pybpf/examples/xdp_count.bpf.c",
                 "pybpf/examples/tcp_dctcp_like.bpf.c", "pybpf/vm/data/kernels.toml", "pybpf/vm/data/init",
                 "pybpf/features/dispatcher/xdp_dispatcher.bpf.c"):
        assert need in names, f"{need} missing from the wheel"
    (ep,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(ep).decode()
    assert "pybpf = pybpf.cli:main" in text and "pybpf = pybpf.testing.plugin" in text
    assert "pybpf_vm = pybpf.vm.pytest_plugin" in text


def test_installed_wheel_works_outside_the_tree(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    check = (
        "import pybpf, pybpf.vm, os\n"
        "assert '/venv/' in pybpf.__file__, pybpf.__file__\n"
        "o = pybpf.compile(os.path.join(os.path.dirname(pybpf.__file__), 'examples', 'xdp_count.bpf.c'))\n"
        "with pybpf.Object.open(o) as obj:\n"
        "    obj.load()\n"
        "    print('retval', obj.programs['xdp_count'].test_run(bytes(64)).retval)\n"
        "print('kernels', ','.join(pybpf.vm.load_matrix()))\n"
    )
    r = subprocess.run([str(py), "-I", "-c", check], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "retval 2" in r.stdout and "kernels 6.1," in r.stdout, r.stdout
    r = subprocess.run([str(venv / "bin" / "pybpf"), "prog", "list"], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
