"""Test support shipped with pybpf: throwaway network namespaces and veth
pairs, bpffs scratch directories, and the pytest plugin (``pybpf.testing.plugin``,
registered through the ``pytest11`` entry point)."""
from pybpf.testing.netns import NetNS, VethPair, bpffs_scratch

__all__ = ["NetNS", "VethPair", "bpffs_scratch"]
