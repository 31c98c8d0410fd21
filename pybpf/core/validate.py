"""Sanity checks of BPF ELF objects and BTF blobs, done in Python before
libbpf sees them.

libbpf 1.1 (Debian bookworm's) trusts parts of its input: an object whose
``.BTF`` refers to a type id that does not exist makes it dereference NULL
(``skip_mods_and_typedefs``) while opening or loading the object, which kills
the interpreter.  libbpf 1.3 added similar validation of its own; until the
linked libbpf has it, :func:`check_elf` and :func:`check_btf` turn such input
into an :class:`~pybpf.errors.ELFError` / :class:`~pybpf.errors.BPFInvalidError`
that says what is wrong.  They check structure only (bounds, indexes, type
references), never semantics: the verifier and libbpf keep judging the rest.

Found by the fuzz targets of tests/reliability (inputs kept in
tests/reliability/corpus/).
"""
from __future__ import annotations

import errno as _errno
import struct

from pybpf.errors import BPFInvalidError, ELFError

BTF_MAGIC = 0xEB9F
EM_BPF = 247
SHT_SYMTAB, SHT_STRTAB, SHT_REL, SHT_NOBITS = 2, 3, 9, 8
SHN_LORESERVE = 0xFF00
MAX_TYPES = 1 << 20

# BTF kinds and the size of the data following each 12-byte btf_type header
# (per member for kinds with a vlen).
_FIXED = {1: 4, 2: 0, 3: 12, 7: 0, 8: 0, 9: 0, 10: 0, 11: 0, 12: 0, 14: 4, 16: 0, 17: 4, 18: 0}
_PER_VLEN = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}
# Kinds whose size/type field is a type id.
_REF_KINDS = {2, 8, 9, 10, 11, 12, 14, 17, 18}
KIND_FUNC, KIND_FUNC_PROTO, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_DATASEC = 12, 13, 3, 4, 5, 15


class _Bad(Exception):
    pass


def check_btf(data: bytes | bytearray | memoryview, *, base_types: int = 0, what: str = "BTF") -> None:
    """Raise :class:`BPFInvalidError` unless ``data`` is structurally sound
    BTF: a valid header, sections inside the blob, every type record complete,
    every name inside the string section, every type reference to an existing
    type (ids below ``base_types`` belong to a base BTF), FUNC -> FUNC_PROTO."""
    try:
        _check_btf(bytes(data), base_types)
    except _Bad as e:
        raise BPFInvalidError(_errno.EINVAL, f"invalid {what}: {e}",
                              hint="the BTF is malformed (truncated or corrupted); rebuild it "
                                   "(clang -g / pahole) instead of editing it") from None


def _check_btf(data: bytes, base_types: int) -> None:
    if len(data) < 24:
        raise _Bad(f"{len(data)} bytes is shorter than the 24-byte header")
    magic, version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
    if magic != BTF_MAGIC:
        raise _Bad(f"bad magic {magic:#x} (expected {BTF_MAGIC:#x}, little-endian)")
    if version != 1:
        raise _Bad(f"unsupported version {version}")
    if hdr_len < 24 or hdr_len > len(data):
        raise _Bad(f"header length {hdr_len} out of range")
    type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
    body = len(data) - hdr_len
    for sect, off, ln in (("type", type_off, type_len), ("string", str_off, str_len)):
        if off > body or ln > body - off:
            raise _Bad(f"{sect} section [{off}, +{ln}) is outside the {body} bytes after the header")
    if type_off % 4 or type_len % 4:
        raise _Bad("type section is not 4-byte aligned")
    if str_len == 0 or data[hdr_len + str_off + str_len - 1] != 0:
        raise _Bad("string section is empty or not NUL-terminated")
    types = data[hdr_len + type_off:hdr_len + type_off + type_len]
    records: list[tuple[int, int, int, int, int]] = []   # (offset, kind, vlen, name_off, size_or_type)
    off = 0
    while off < len(types):
        if len(types) - off < 12:
            raise _Bad(f"type record [{base_types + len(records) + 1}] truncated")
        name_off, info, st = struct.unpack_from("<III", types, off)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        if kind in _FIXED:
            extra = _FIXED[kind]
        elif kind in _PER_VLEN:
            extra = _PER_VLEN[kind] * vlen
        else:
            raise _Bad(f"type [{base_types + len(records) + 1}] has unknown kind {kind}")
        if off + 12 + extra > len(types):
            raise _Bad(f"type [{base_types + len(records) + 1}] runs past the end of the type section")
        records.append((off, kind, vlen, name_off, st))
        off += 12 + extra
        if len(records) > MAX_TYPES:
            raise _Bad("too many types")
    count = base_types + len(records) + 1     # ids 0 .. count-1 exist

    def ref(tid: int, who: int, role: str) -> None:
        if tid >= count:
            raise _Bad(f"type [{who}] {role} refers to type [{tid}], which does not exist (last is [{count - 1}])")

    strings = data[hdr_len + str_off:hdr_len + str_off + str_len]

    def name(noff: int, who: int) -> None:
        if noff >= str_len:
            raise _Bad(f"type [{who}] has a name offset {noff} past the string section ({str_len} bytes)")
        _utf8(strings[noff:strings.index(b"\0", noff)], f"type [{who}] name")

    kinds = {base_types + i + 1: r[1] for i, r in enumerate(records)}
    for i, (roff, kind, vlen, name_off, st) in enumerate(records):
        tid = base_types + i + 1
        name(name_off, tid)
        x = roff + 12
        if kind in _REF_KINDS:
            ref(st, tid, "type")
        if kind == KIND_FUNC:
            if st == 0 or (st > base_types and kinds[st] != KIND_FUNC_PROTO):
                raise _Bad(f"FUNC [{tid}] has type [{st}], which is not a FUNC_PROTO")
        elif kind == KIND_ARRAY:
            elem, index, _n = struct.unpack_from("<III", types, x)
            ref(elem, tid, "element type")
            ref(index, tid, "index type")
        elif kind in (KIND_STRUCT, KIND_UNION):
            for j in range(vlen):
                m_name, m_type, _ = struct.unpack_from("<III", types, x + 12 * j)
                name(m_name, tid)
                ref(m_type, tid, f"member {j}")
        elif kind == KIND_FUNC_PROTO:
            ref(st, tid, "return type")
            for j in range(vlen):
                p_name, p_type = struct.unpack_from("<II", types, x + 8 * j)
                name(p_name, tid)
                ref(p_type, tid, f"parameter {j}")
        elif kind == KIND_DATASEC:
            for j in range(vlen):
                v_type, _, _ = struct.unpack_from("<III", types, x + 12 * j)
                ref(v_type, tid, f"variable {j}")
        elif kind in (6, 19):
            per = _PER_VLEN[kind]
            for j in range(vlen):
                name(struct.unpack_from("<I", types, x + per * j)[0], tid)


def _utf8(raw: bytes, what: str) -> bytes:
    """Names become Python strings (program, map, section, type names): they must be UTF-8."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Bad(f"{what} {raw[:40]!r} is not UTF-8 ({e.reason} at byte {e.start})") from None
    return raw


def check_elf(data: bytes | bytearray | memoryview, what: str = "BPF object") -> None:
    """Raise :class:`ELFError` unless ``data`` is a structurally sound ELF64
    little-endian relocatable file: header, section table, section bounds,
    symbol and relocation indexes, and its ``.BTF`` (see :func:`check_btf`)."""
    try:
        _check_elf(bytes(data), what)
    except _Bad as e:
        raise ELFError(_errno.EINVAL, f"open {what}: malformed ELF: {e}",
                       hint="is it a BPF ELF object built with clang -target bpf -g? "
                            "the file may be truncated or corrupted") from None


def _check_elf(data: bytes, what: str) -> None:
    if len(data) < 64 or data[:4] != b"\x7fELF":
        raise _Bad("not an ELF file (bad magic or shorter than the ELF header)")
    if data[4] != 2 or data[5] != 1:
        raise _Bad("not a 64-bit little-endian ELF file")
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    if e_machine not in (EM_BPF, 0):
        raise _Bad(f"machine {e_machine} is not BPF ({EM_BPF})")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    ehsize, _, _, shentsize, shnum, shstrndx = struct.unpack_from("<HHHHHH", data, 0x34)
    if shentsize != 64:
        raise _Bad(f"section header size {shentsize} is not 64")
    if shnum == 0 or shoff > len(data) or shnum * 64 > len(data) - shoff:
        raise _Bad(f"section table ({shnum} entries at {shoff}) is outside the file ({len(data)} bytes)")
    if shstrndx >= shnum:
        raise _Bad(f"section name table index {shstrndx} out of range ({shnum} sections)")
    shdrs = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * 64) for i in range(shnum)]

    def body(i: int) -> tuple[int, int]:
        _, sh_type, _, _, off, size = shdrs[i][:6]
        if sh_type == SHT_NOBITS:
            return off, 0
        if off > len(data) or size > len(data) - off:
            raise _Bad(f"section {i} [{off}, +{size}) is outside the file ({len(data)} bytes)")
        return off, size

    str_off, str_size = body(shstrndx)
    if shdrs[shstrndx][1] != SHT_STRTAB or str_size == 0 or data[str_off + str_size - 1] != 0:
        raise _Bad("the section name table is not a NUL-terminated string table")
    names = []
    for i, h in enumerate(shdrs):
        body(i)
        if h[0] >= str_size:
            raise _Bad(f"section {i} name offset {h[0]} is outside the name table")
        names.append(_utf8(data[str_off + h[0]:data.index(b"\0", str_off + h[0])], f"section {i} name"))
    symtabs = [i for i, h in enumerate(shdrs) if h[1] == SHT_SYMTAB]
    nsyms = {}
    for i in symtabs:
        _, _, _, _, off, size, link, _, _, entsize = shdrs[i]
        if entsize != 24 or size % 24:
            raise _Bad(f"symbol table {i} has entry size {entsize} (expected 24)")
        if link >= shnum or shdrs[link][1] != SHT_STRTAB:
            raise _Bad(f"symbol table {i} links to section {link}, which is not a string table")
        soff, ssize = body(link)
        if ssize == 0 or data[soff + ssize - 1] != 0:
            raise _Bad(f"string table {link} is not NUL-terminated")
        nsyms[i] = size // 24
        for j in range(size // 24):
            st_name, _info, _other, st_shndx = struct.unpack_from("<IBBH", data, off + 24 * j)
            if st_name >= ssize:
                raise _Bad(f"symbol {j} name offset {st_name} is outside its string table")
            _utf8(data[soff + st_name:data.index(b"\0", soff + st_name)], f"symbol {j} name")
            if st_shndx >= shnum and st_shndx < SHN_LORESERVE:
                raise _Bad(f"symbol {j} refers to section {st_shndx}, which does not exist")
    for i, h in enumerate(shdrs):
        if h[1] != SHT_REL:
            continue
        _, _, _, _, off, size, link, info, _, entsize = h
        if entsize != 16 or size % 16:
            raise _Bad(f"relocation section {i} has entry size {entsize} (expected 16)")
        if link not in nsyms:
            raise _Bad(f"relocation section {i} links to section {link}, which is not the symbol table")
        if info >= shnum:
            raise _Bad(f"relocation section {i} applies to section {info}, which does not exist")
        target_size = shdrs[info][5]
        for j in range(size // 16):
            r_offset, r_info = struct.unpack_from("<QQ", data, off + 16 * j)
            if (r_info >> 32) >= nsyms[link]:
                raise _Bad(f"relocation {j} of section {i} uses symbol {r_info >> 32}, which does not exist")
            if r_offset >= target_size:
                raise _Bad(f"relocation {j} of section {i} is at offset {r_offset}, past its section")
    for i, n in enumerate(names):
        if n == b".BTF":
            off, size = body(i)
            try:
                _check_btf(data[off:off + size], 0)
            except _Bad as e:
                raise _Bad(f".BTF section: {e}") from None
