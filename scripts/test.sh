#!/usr/bin/env bash
# The whole test suite: set up (idempotent), type-check, run the host suite,
# then the tests that need BPF trampolines (refused by this host's kernel)
# inside VM guests of every kernel of the matrix (6.1, 6.12, 7.3; two at a time).
#
#   bash scripts/test.sh                 # everything
#   PYBPF_GUEST_KERNELS=6.1,7.3 bash scripts/test.sh        # fewer guests
#   bash scripts/test.sh -k maps         # extra args go to the host pytest run
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
PY=${PYTHON:-python3}
mkdir -p results
status=0

echo "== mypy"
"$PY" -m mypy pybpf || status=1

echo "== host suite (kernel $(uname -r))"
"$PY" -m pytest tests/ -p no:cacheprovider --junitxml=results/junit-host.xml "$@" || status=1

GUEST_KERNELS=${PYBPF_GUEST_KERNELS:-6.1,6.12,7.3}
# what needs trampolines (refused on this host), and the struct_ops and kptr
# suites (they run on the host too: here they are proven on the guests' kernels)
GUEST_TESTS=(tests/test_trampolines.py tests/test_extensions.py tests/test_shared_subprog.py
             tests/test_dispatcher.py tests/reliability/test_dispatcher_crash.py
             tests/reliability/test_crash.py tests/reliability/test_hygiene.py
             tests/test_struct_ops.py tests/test_kptr.py tests/test_cli.py)
GUEST_MARKS="trampoline or freplace or fmod_ret or struct_ops or struct_ops_link or kptr or kptr_untrusted"
# clang runs about 15 times slower in a TCG guest: compile the guests'
# objects here, into the cache the guests share (a source that does not
# compile, like kptr_fwd.bpf.c on purpose, is left to its test)
echo "== BPF objects for $GUEST_KERNELS, compiled on the host (results/guest-objects.txt)"
"$PY" -m pybpf.vm compile --kernel "$GUEST_KERNELS" tests/progs/*.bpf.c tests/reliability/progs/*.bpf.c \
    pybpf/features/dispatcher/*.bpf.c > results/guest-objects.txt 2>&1 || true
echo "== guests $GUEST_KERNELS: trampoline/freplace, struct_ops and kptr tests"
"$PY" -m pytest "${GUEST_TESTS[@]}" -m "$GUEST_MARKS" \
    -p no:cacheprovider -p no:hypothesispytest \
    --kernels "$GUEST_KERNELS" --vm-jobs 2 --vm-results results || status=1

# the cleanup contract: nothing left behind
left=$(ip netns list 2>/dev/null | grep -c '^pybpf-' || true)
if [ "$left" -gt 0 ]; then echo "error: $left pybpf network namespaces left behind"; status=1; fi
if pgrep -x qemu-system-x86 >/dev/null && [ -z "${PYBPF_ALLOW_QEMU:-}" ]; then
  echo "error: QEMU processes left behind"; status=1
fi
exit $status
