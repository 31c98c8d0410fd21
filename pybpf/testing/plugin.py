"""pybpf's pytest plugin (entry point ``pytest11: pybpf``).

Markers
  ``@pytest.mark.needs("trampoline", ...)``: the test needs these kernel
  features (names from :data:`pybpf.probes.FEATURES`).  Each also becomes a
  marker of its own, so ``-m trampoline`` selects the tests that need it.
  Missing features skip the test with the probe's reason, **but** the skip
  turns into a failure when the kernel is new enough to have the feature and
  either did not refuse it by policy or runs inside a pybpf VM guest
  (``PYBPF_VM=1``, set by the harness, where nothing may be refused),
  or when the feature is listed in ``PYBPF_REQUIRE_FEATURES`` (``all`` for
  every feature).
  ``@pytest.mark.kernel(min="6.2", max=None)``: kernel version bounds.

Fixtures
  ``netns`` (a throwaway :class:`~pybpf.testing.NetNS`), ``veth_pair``
  (:class:`~pybpf.testing.VethPair`), ``bpffs`` (a scratch bpffs directory),
  ``bpf_compile`` (:func:`pybpf.compile`), ``fd_leak_check``.
"""
from __future__ import annotations

import os
import re
from typing import Any, Iterator

import pytest

from pybpf.testing.netns import NetNS, VethPair, bpffs_scratch, leftover_namespaces


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def _required(feature: str) -> bool:
    req = {x.strip() for x in os.environ.get("PYBPF_REQUIRE_FEATURES", "").split(",") if x.strip()}
    return "all" in req or feature in req


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs(*features): kernel features the test needs (pybpf.probes.FEATURES)")
    config.addinivalue_line("markers", "kernel(min=None, max=None): kernel version bounds for the test")
    from pybpf.probes import FEATURES
    for name, f in FEATURES.items():
        config.addinivalue_line("markers", f"{name}: needs {f.description}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from pybpf.probes import FEATURES

    for item in items:
        for mark in item.iter_markers("needs"):
            for feature in mark.args:
                if feature in FEATURES:    # an unknown one fails the test at setup
                    item.add_marker(getattr(pytest.mark, feature))


def pytest_runtest_setup(item: pytest.Item) -> None:
    from pybpf.probes import FEATURES, expected, kernel_version, probe

    for mark in item.iter_markers("kernel"):
        kv = kernel_version()
        lo, hi = mark.kwargs.get("min"), mark.kwargs.get("max")
        if lo and kv < _version(lo):
            pytest.skip(f"needs Linux {lo}+, this is {os.uname().release}")
        if hi and kv > _version(hi):
            pytest.skip(f"needs Linux up to {hi}, this is {os.uname().release}")
    for mark in item.iter_markers("needs"):
        for feature in mark.args:
            if feature not in FEATURES:
                pytest.fail(f"unknown feature '{feature}' in @needs (known: {', '.join(FEATURES)})", pytrace=False)
            r = probe(feature)
            if r:
                continue
            in_guest = os.environ.get("PYBPF_VM") == "1" or os.environ.get("PYBPF_VM_GUEST") == "1"
            must = _required(feature) or (expected(feature) and (in_guest or not r.refused_by_policy))
            if must:
                pytest.fail(f"feature '{feature}' is missing on Linux {os.uname().release}, which should have it "
                            f"(since {FEATURES[feature].min_kernel_str}): {r.reason}", pytrace=False)
            pytest.skip(f"{feature}: {r.reason}")


@pytest.fixture
def netns() -> Iterator[NetNS]:
    """A throwaway network namespace, deleted after the test."""
    with NetNS() as ns:
        yield ns


@pytest.fixture
def veth_pair() -> Iterator[VethPair]:
    """Two throwaway namespaces joined by a veth pair (192.0.2.0/24 inside)."""
    with VethPair() as vp:
        yield vp


@pytest.fixture
def bpffs() -> Iterator[str]:
    """A scratch directory in bpffs, removed with its pins after the test."""
    with bpffs_scratch() as path:
        yield path


@pytest.fixture
def bpf_compile() -> Any:
    """:func:`pybpf.compile` (objects are cached by content)."""
    import pybpf
    return pybpf.compile


def _open_fds() -> set[int]:
    return {int(x) for x in os.listdir("/proc/self/fd")}


@pytest.fixture
def fd_leak_check() -> Iterator[None]:
    """Fails the test if it leaves file descriptors open (after a GC)."""
    import gc
    gc.collect()
    before = _open_fds()
    yield
    gc.collect()
    leaked = _open_fds() - before
    details = []
    for fd in sorted(leaked):
        try:
            details.append(f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            pass
    if details:
        pytest.fail("file descriptors leaked: " + ", ".join(details))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    left = leftover_namespaces()
    if left:
        for name in left:
            os.system(f"ip netns del {name} 2>/dev/null")
        session.config.pluginmanager.get_plugin("terminalreporter") and print(
            f"\npybpf: removed {len(left)} network namespace(s) left by tests: {', '.join(left)}")
