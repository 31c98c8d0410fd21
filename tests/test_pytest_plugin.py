"""pybpf's pytest plugin, run on a users' suite of its own (pytester, in a
subprocess): @needs skips with the probe's reason and fails where the
feature must exist, @kernel bounds, unknown features, and fixtures that
clean their namespaces, veth pairs and bpffs pins up when the test fails."""
from __future__ import annotations

import os
import subprocess

import pytest

from pybpf.probes import probe

pytest_plugins = ["pytester"]

SUITE = '''
import os, pathlib, pytest

OUT = pathlib.Path(os.environ["PLUGIN_OUT"])

@pytest.mark.needs("trampoline")
def test_needs_trampoline():
    pass

@pytest.mark.kernel(min="999.0")
def test_future_kernel():
    pass

@pytest.mark.kernel(max="2.6")
def test_ancient_kernel():
    pass

@pytest.mark.needs("warp_drive")
def test_unknown_feature():
    pass

def test_fixtures_then_failure(netns, veth_pair, bpffs):
    import pybpf
    m = pybpf.Map.create("array", 4, 4, 1, name="plugin_pin")
    m.pin(os.path.join(bpffs, "m"))
    m.close()
    OUT.write_text("\\n".join([netns.name, veth_pair.a.name, veth_pair.b.name, bpffs]))
    assert False, "this test fails on purpose"
'''


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _run(pytester: pytest.Pytester, tmp_path, env: dict[str, str]) -> tuple[pytest.RunResult, str]:
    pytester.makepyfile(test_users_suite=SUITE)
    out = tmp_path / "fixtures.txt"
    old = {k: os.environ.get(k) for k in (*env, "PLUGIN_OUT")}
    os.environ.update(env, PLUGIN_OUT=str(out))
    try:
        result = pytester.runpytest_subprocess("-rsf", "-p", "no:cacheprovider", "-p", "no:hypothesispytest")
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return result, out.read_text() if out.exists() else ""


@pytest.mark.parametrize("required", [False, True], ids=["plain", "PYBPF_REQUIRE_FEATURES"])
def test_markers_and_fixture_cleanup_in_a_users_suite(pytester, tmp_path, required):
    env = {"PYBPF_REQUIRE_FEATURES": "trampoline" if required else ""}
    in_guest = os.environ.get("PYBPF_VM") == "1"
    before = _namespaces()
    result, fixtures = _run(pytester, tmp_path, env)
    text = result.stdout.str()
    outcomes = result.parseoutcomes()

    # @needs: the probe decides; a kernel that must have the feature fails instead of skipping
    r = probe("trampoline")
    if r:
        expect_tramp = "passed"
    elif required or in_guest or not r.refused_by_policy:
        expect_tramp = "failed"
        assert "feature 'trampoline' is missing on Linux" in text and "which should have it" in text, text
    else:
        expect_tramp = "skipped"
        assert f"trampoline: {r.reason}" in text, text
    # @kernel bounds: both skipped, with the bound named
    assert "needs Linux 999.0+, this is" in text and "needs Linux up to 2.6, this is" in text, text
    # an unknown feature name is the test author's error: a failure naming the known ones
    assert "unknown feature 'warp_drive' in @needs (known: " in text, text
    # the fixtures' test failed, and what its fixtures made is gone
    assert "this test fails on purpose" in text, text
    ns, veth_a, veth_b, pin_dir = fixtures.splitlines()
    left = _namespaces() - before
    assert not ({ns, veth_a, veth_b} & left), f"namespaces left behind: {left}"
    assert not os.path.exists(pin_dir), f"bpffs scratch {pin_dir} left behind"

    # pytest counts a failure in setup (where the plugin decides) as an error
    passed = 1 if expect_tramp == "passed" else 0
    errors = 1 + (expect_tramp == "failed")     # unknown feature (+ trampoline that must exist)
    skipped = 2 + (expect_tramp == "skipped")
    got = tuple(outcomes.get(k, 0) for k in ("passed", "failed", "errors", "skipped"))
    assert got == (passed, 1, errors, skipped), text
