"""``python -m pybpf``: the ``pybpf`` command."""
import sys

from pybpf.cli import main

if __name__ == "__main__":
    sys.exit(main())
