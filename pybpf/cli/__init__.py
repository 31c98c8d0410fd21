"""The ``pybpf`` command: bpftool's shape, pybpf underneath.

``pybpf [OPTIONS] OBJECT COMMAND ...`` with OBJECT one of ``prog``, ``map``,
``link``, ``btf``, ``struct-ops``, ``ext``, ``xdp``, ``link-objects``, ``vm``.
Readable text by default; ``-j``/``--json`` prints JSON with bpftool's field
names wherever bpftool has the same command (``-p`` pretty-prints it).
Errors are one line on stderr (and ``{"error": ...}`` on stdout with
``--json``, as bpftool does) with a non-zero exit status; ``-v``/``--verbose``
adds the whole verifier log when a load is refused.  See docs/cli.md.
"""
from __future__ import annotations

import logging
import sys
from typing import Callable

from pybpf.cli._common import CLIError, Ctx, NotAvailable, match, one_line

__all__ = ["main", "CLIError", "NotAvailable"]

USAGE = """Usage: pybpf [OPTIONS] OBJECT { COMMAND | help }
       OBJECT := { prog | map | link | btf | struct-ops | ext | xdp | link-objects | vm }
       OPTIONS := { -j|--json [-p|--pretty] | -v|--verbose | -d|--debug | -f|--bpffs | -V|--version }

  pybpf prog list                         programs loaded now (bpftool prog show)
  pybpf prog run id 42 data_pcap in.pcap  test-run a program on packets
  pybpf map dump name flows               BTF-typed dump (bpftool map dump)
  pybpf -j map lookup id 7 key 1          JSON with bpftool's field names
  pybpf OBJECT help                       the commands of OBJECT"""

OPTIONS = {"-j": "json", "--json": "json", "-p": "pretty", "--pretty": "pretty", "-v": "verbose",
           "--verbose": "verbose", "-d": "debug", "--debug": "debug", "-f": "bpffs", "--bpffs": "bpffs"}


def _objects() -> dict[str, Callable[[Ctx, list[str]], int]]:
    from pybpf.cli import _features, _link_btf, _map, _prog

    return {
        "prog": _prog.main,
        "map": _map.main,
        "link": _link_btf.link_main,
        "btf": _link_btf.btf_main,
        "struct-ops": _features.struct_ops_main,
        "ext": _features.ext_main,
        "xdp": _features.xdp_main,
        "link-objects": _features.link_objects_main,
        "vm": _features.vm_main,
    }


def _split_options(argv: list[str], ctx: Ctx) -> list[str]:
    """Take the global options out of ``argv`` (anywhere before ``--``, as
    bpftool's getopt allows), keeping everything after ``--`` intact."""
    words: list[str] = []
    rest: list[str] = []
    for i, a in enumerate(argv):
        if a == "--":
            rest = argv[i:]
            break
        if a in OPTIONS:
            setattr(ctx, OPTIONS[a], True)
        elif a.startswith("-") and len(a) > 2 and not a.startswith("--") and all(("-" + c) in OPTIONS for c in a[1:]):
            for c in a[1:]:
                setattr(ctx, OPTIONS["-" + c], True)
        elif a in ("-V", "--version"):
            words = ["version"]
            return words
        elif a in ("-h", "--help") and not words:
            words.append("help")
        else:
            words.append(a)
    if ctx.pretty:
        ctx.json = True
    return words + rest


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pybpf`` console script. Returns the exit status."""
    ctx = Ctx()
    # argv words that are not UTF-8 (file names) arrive as surrogates: write them back as the same
    # bytes, as Python itself does in the C locale, instead of failing in a UTF-8 one
    if getattr(ctx.out, "errors", None) == "strict" and hasattr(ctx.out, "reconfigure"):
        ctx.out.reconfigure(errors="surrogateescape")
    args = list(sys.argv[1:] if argv is None else argv)
    # `vm` passes everything after it to the harness untouched.
    if args and args[0] == "vm":
        words = args
    else:
        words = _split_options(args, ctx)
    if ctx.debug:
        logging.basicConfig(level=logging.DEBUG, format="libbpf: %(message)s")
        logging.getLogger("pybpf.libbpf").setLevel(logging.DEBUG)
    if not words or words[0] == "help":
        ctx.say(USAGE)
        return 0 if words else _fail(ctx, "expected an OBJECT (see the usage above)", 2)
    if words[0] == "version":
        import pybpf

        if ctx.json:
            ctx.emit({"version": pybpf.__version__, "libbpf_version": "%d.%d" % pybpf.LIBBPF_VERSION})
        else:
            ctx.say(f"pybpf {pybpf.__version__}\nusing libbpf v{pybpf.LIBBPF_VERSION[0]}.{pybpf.LIBBPF_VERSION[1]}")
        return 0
    try:
        objects = _objects()
        obj = match(words[0].replace("_", "-"), list(objects), "object")
        return objects[obj](ctx, words[1:])
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except CLIError as e:
        return _fail(ctx, str(e), e.status)
    except Exception as e:  # noqa: BLE001 - every failure becomes one line and a status
        from pybpf.errors import VerifierError

        if ctx.verbose and isinstance(e, VerifierError):
            print(f"verifier log of program '{e.program}':\n{e.log.rstrip()}", file=ctx.err)
        if ctx.debug:
            import traceback
            traceback.print_exc(file=ctx.err)
        return _fail(ctx, one_line(e), 1)


def _fail(ctx: Ctx, message: str, status: int) -> int:
    message = message.replace("\r", "\\r").replace("\n", "\\n")     # one line, whatever words it quotes
    if ctx.json:
        ctx.emit({"error": message})
    print(f"Error: {message}", file=ctx.err)
    return status
