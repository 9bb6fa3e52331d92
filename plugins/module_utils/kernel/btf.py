"""Read struct member offsets from the running kernel's BTF, in pure Python.

The kernel describes its own types in ``/sys/kernel/btf/vmlinux`` (BTF: a
header, a type section and a string section; see the kernel's
``Documentation/bpf/btf.rst``). LatScope never trusts header layouts for
``sk_buff``, ``sock``, ``tcp_sock``, ``net_device`` or ``net``: it resolves the
offsets it needs here and hands them to the BPF C code as ``-D`` macros.

Loading makes one pass over the type section that only records where each
type starts (every kind is skipped by its exact size); names are decoded and
indexed on first lookup, and members only for the structs actually asked for.

    btf = Btf.load()
    btf.member_offset("sk_buff", "len")              # -> 112 (bytes)
    btf.field("sock.__sk_common.skc_daddr")          # -> Field(offset=0, size=4, ...)
    offsets_to_macros({"SKB_LEN": "sk_buff.len"})    # -> ["-DSKB_LEN=112"]
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")

BTF_MAGIC = 0xEB9F
HEADER_MIN_LEN = 24
TYPE_HEADER_LEN = 12

KIND_INT = 1
KIND_PTR = 2
KIND_ARRAY = 3
KIND_STRUCT = 4
KIND_UNION = 5
KIND_ENUM = 6
KIND_FWD = 7
KIND_TYPEDEF = 8
KIND_VOLATILE = 9
KIND_CONST = 10
KIND_RESTRICT = 11
KIND_FUNC = 12
KIND_FUNC_PROTO = 13
KIND_VAR = 14
KIND_DATASEC = 15
KIND_FLOAT = 16
KIND_DECL_TAG = 17
KIND_TYPE_TAG = 18
KIND_ENUM64 = 19

KIND_NAMES = {
    0: "VOID", KIND_INT: "INT", KIND_PTR: "PTR", KIND_ARRAY: "ARRAY", KIND_STRUCT: "STRUCT",
    KIND_UNION: "UNION", KIND_ENUM: "ENUM", KIND_FWD: "FWD", KIND_TYPEDEF: "TYPEDEF",
    KIND_VOLATILE: "VOLATILE", KIND_CONST: "CONST", KIND_RESTRICT: "RESTRICT",
    KIND_FUNC: "FUNC", KIND_FUNC_PROTO: "FUNC_PROTO", KIND_VAR: "VAR", KIND_DATASEC: "DATASEC",
    KIND_FLOAT: "FLOAT", KIND_DECL_TAG: "DECL_TAG", KIND_TYPE_TAG: "TYPE_TAG",
    KIND_ENUM64: "ENUM64",
}

# Bytes that follow the 12-byte btf_type: (fixed, per vlen entry).
KIND_TRAILER = {
    KIND_INT: (4, 0),
    KIND_PTR: (0, 0),
    KIND_ARRAY: (12, 0),
    KIND_STRUCT: (0, 12),
    KIND_UNION: (0, 12),
    KIND_ENUM: (0, 8),
    KIND_FWD: (0, 0),
    KIND_TYPEDEF: (0, 0),
    KIND_VOLATILE: (0, 0),
    KIND_CONST: (0, 0),
    KIND_RESTRICT: (0, 0),
    KIND_FUNC: (0, 0),
    KIND_FUNC_PROTO: (0, 8),
    KIND_VAR: (4, 0),
    KIND_DATASEC: (0, 12),
    KIND_FLOAT: (0, 0),
    KIND_DECL_TAG: (4, 0),
    KIND_TYPE_TAG: (0, 0),
    KIND_ENUM64: (0, 12),
}

# Kinds that only qualify or rename another type; followed when resolving a member's type.
TRANSPARENT_KINDS = frozenset({KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT,
                               KIND_TYPE_TAG})
COMPOSITE_KINDS = frozenset({KIND_STRUCT, KIND_UNION})
SIZED_KINDS = frozenset({KIND_INT, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64, KIND_FLOAT,
                         KIND_DATASEC})
MAX_TYPE_DEPTH = 64
# The kernel's ``#define sk_X __sk_common.skc_X`` aliases (include/net/sock.h): a member
# "<prefix>X" missing from a struct that embeds <container> is looked up as
# "<container>.<inner prefix>X", so "sock.sk_net" works like the C source.
MEMBER_ALIASES = (("sk_", "__sk_common", "skc_"),)
MACRO_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class BtfError(Exception):
    """Base class of every BTF error."""


class BtfFormatError(BtfError, ValueError):
    """The blob is not valid BTF (the message names the offending header field or type id)."""


class BtfFieldError(BtfError, LookupError):
    """A struct or member does not exist, or cannot be used as asked (e.g. it is a bitfield)."""

    def __init__(self, message: str, struct_name: str = "", field_path: str = "") -> None:
        super().__init__(message)
        self.struct_name = struct_name
        self.field_path = field_path


@dataclass(frozen=True)
class BtfHeader:
    magic: int
    version: int
    flags: int
    hdr_len: int
    type_off: int
    type_len: int
    str_off: int
    str_len: int


@dataclass(frozen=True)
class Member:
    name: str
    type_id: int
    bit_offset: int  # from the start of the enclosing struct/union
    bitfield_size: int  # 0 when the member is not a bitfield


@dataclass(frozen=True)
class Field:
    """Where a (possibly nested) member lives inside its outermost struct."""

    struct_name: str
    path: str
    offset: int  # bytes from the start of the struct (floor for a bitfield)
    size: int  # bytes of the member's type
    bit_offset: int  # bits from the start of the struct
    bit_size: int  # 0 unless the member is a bitfield
    type_id: int
    kind: str  # BTF kind of the member's type after typedefs/qualifiers

    @property
    def is_bitfield(self) -> bool:
        return self.bit_size != 0


class Btf:
    """A parsed BTF blob; build it with :meth:`load` or :meth:`from_bytes`."""

    def __init__(self, data: bytes, header: BtfHeader, endian: str, type_starts: list[int],
                 source: str) -> None:
        self._data = data
        self.header = header
        self._endian = endian
        self._type_starts = type_starts  # index = type id; [0] unused (void)
        self._types_base = header.hdr_len + header.type_off
        self._strings_base = header.hdr_len + header.str_off
        self.source = source
        self._ids_by_name_off: dict[int, list[int]] | None = None
        self._ids_by_name: dict[str, list[int]] = {}
        self._members: dict[int, list[Member]] = {}
        self._type_header = struct.Struct(endian + "III")
        self._member_entry = struct.Struct(endian + "III")
        self._u32 = struct.Struct(endian + "I")
        self._array = struct.Struct(endian + "III")
        self._pointer_size: int | None = None

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path = VMLINUX_BTF) -> "Btf":
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BtfFormatError(f"cannot read BTF file {path}: {exc.strerror}") from exc
        return cls.from_bytes(data, source=str(path))

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> "Btf":
        header, endian = _parse_header(data, source)
        starts = _index_types(data, header, endian, source)
        return cls(data, header, endian, starts, source)

    # ---- raw type access ---------------------------------------------------------------

    @property
    def type_count(self) -> int:
        """Number of types, not counting void (id 0)."""
        return len(self._type_starts) - 1

    def _raw(self, type_id: int) -> tuple[int, int, int, int, int]:
        """(name_off, kind, vlen, kind_flag, size_or_type) of ``type_id``."""
        if not 0 < type_id < len(self._type_starts):
            raise BtfFormatError(f"{self.source}: type id {type_id} out of range "
                                 f"(1..{self.type_count})")
        name_off, info, size_or_type = self._type_header.unpack_from(
            self._data, self._type_starts[type_id])
        return name_off, (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, size_or_type

    def kind(self, type_id: int) -> int:
        return 0 if type_id == 0 else self._raw(type_id)[1]

    def name(self, type_id: int) -> str:
        return "" if type_id == 0 else self.string(self._raw(type_id)[0])

    def string(self, offset: int) -> str:
        if not 0 <= offset < self.header.str_len:
            raise BtfFormatError(f"{self.source}: string offset {offset} outside the string "
                                 f"section (str_len={self.header.str_len})")
        start = self._strings_base + offset
        end = self._data.index(b"\0", start, self._strings_base + self.header.str_len)
        return self._data[start:end].decode("utf-8", "replace")

    def strip(self, type_id: int) -> int:
        """Follow typedefs and qualifiers to the underlying type id."""
        for depth in range(MAX_TYPE_DEPTH):  # pylint: disable=unused-variable
            if type_id == 0:
                return 0
            kind, target = self._raw(type_id)[1], self._raw(type_id)[4]
            if kind not in TRANSPARENT_KINDS:
                return type_id
            type_id = target
        raise BtfFormatError(f"{self.source}: type chain from id {type_id} deeper than "
                             f"{MAX_TYPE_DEPTH}")

    def type_size(self, type_id: int) -> int:
        """Size in bytes of a type (pointers: the kernel's pointer size)."""
        resolved = self.strip(type_id)
        if resolved == 0:
            raise BtfFieldError(f"type id {type_id} is void and has no size")
        kind, size_or_type = self._raw(resolved)[1], self._raw(resolved)[4]
        if kind in SIZED_KINDS:
            return size_or_type
        if kind == KIND_PTR:
            return self.pointer_size
        if kind == KIND_ARRAY:
            elem, _index_type, nelems = self._array.unpack_from(
                self._data, self._type_starts[resolved] + TYPE_HEADER_LEN)
            return nelems * self.type_size(elem) if nelems else 0
        raise BtfFieldError(f"type id {resolved} ({KIND_NAMES.get(kind, kind)} "
                            f"'{self.name(resolved)}') has no size")

    @property
    def pointer_size(self) -> int:
        """Taken from the kernel's ``long`` (BTF does not record a pointer size)."""
        if self._pointer_size is None:
            self._pointer_size = 8
            for name in ("long unsigned int", "long int"):
                ids = self.find_types(name, frozenset({KIND_INT}))
                if ids:
                    self._pointer_size = self._raw(ids[0])[4]
                    break
        return self._pointer_size

    def members(self, type_id: int) -> list[Member]:
        """Direct members of a struct/union (anonymous ones have name '')."""
        cached = self._members.get(type_id)
        if cached is not None:
            return cached
        kind, vlen, kind_flag = self._raw(type_id)[1:4]
        if kind not in COMPOSITE_KINDS:
            raise BtfFieldError(f"type id {type_id} ('{self.name(type_id)}') is a "
                                f"{KIND_NAMES.get(kind, kind)}, not a struct or union")
        result: list[Member] = []
        pos = self._type_starts[type_id] + TYPE_HEADER_LEN
        for index in range(vlen):  # pylint: disable=unused-variable
            name_off, member_type, offset = self._member_entry.unpack_from(self._data, pos)
            pos += 12
            if kind_flag:
                bit_offset, bitfield_size = offset & 0xFFFFFF, offset >> 24
            else:
                bit_offset, bitfield_size = offset, self._int_bitfield_size(member_type)
                if bitfield_size:
                    bit_offset += self._int_bit_offset(member_type)
            result.append(Member(self.string(name_off), member_type, bit_offset, bitfield_size))
        self._members[type_id] = result
        return result

    def _int_encoding(self, type_id: int) -> tuple[int, int, int] | None:
        resolved = self.strip(type_id)
        if resolved == 0 or self._raw(resolved)[1] != KIND_INT:
            return None
        size = self._raw(resolved)[4]
        (encoding,) = self._u32.unpack_from(self._data,
                                            self._type_starts[resolved] + TYPE_HEADER_LEN)
        return size, (encoding >> 16) & 0xFF, encoding & 0xFF

    def _int_bitfield_size(self, type_id: int) -> int:
        """Non-kind_flag structs encode bitfields in the INT itself."""
        enc = self._int_encoding(type_id)
        if enc is None:
            return 0
        size, bit_off, nr_bits = enc
        return nr_bits if (nr_bits != size * 8 or bit_off) else 0

    def _int_bit_offset(self, type_id: int) -> int:
        enc = self._int_encoding(type_id)
        return enc[1] if enc else 0

    # ---- name lookup ------------------------------------------------------------------

    def _ids_by_name_offset(self) -> dict[int, list[int]]:
        """name_off -> type ids, built once without decoding any string."""
        if self._ids_by_name_off is None:
            index: dict[int, list[int]] = {}
            unpack = self._type_header.unpack_from
            data = self._data
            for type_id, start in enumerate(self._type_starts):
                if type_id:
                    name_off = unpack(data, start)[0]
                    if name_off:
                        if name_off in index:
                            index[name_off].append(type_id)
                        else:
                            index[name_off] = [type_id]
            self._ids_by_name_off = index
        return self._ids_by_name_off

    def _string_offsets(self, name: str) -> list[int]:
        """Every offset in the string section where the NUL-terminated ``name`` starts."""
        if not name:
            return []
        needle = b"\0" + name.encode() + b"\0"
        base, end = self._strings_base, self._strings_base + self.header.str_len
        found: list[int] = []
        pos = self._data.find(needle, base, end)
        while pos >= 0:
            found.append(pos + 1 - base)
            pos = self._data.find(needle, pos + 1, end)
        return found

    def find_types(self, name: str, kinds: frozenset[int] | None = None) -> list[int]:
        """Ids of every type called ``name`` (optionally only of the given kinds)."""
        ids = self._ids_by_name.get(name)
        if ids is None:
            by_offset = self._ids_by_name_offset()
            ids = sorted(tid for off in self._string_offsets(name)
                         for tid in by_offset.get(off, []))
            self._ids_by_name[name] = ids
        if kinds is None:
            return list(ids)
        return [tid for tid in ids if self._raw(tid)[1] in kinds]

    def find_type(self, name: str, kind: int) -> int:
        """Id of the first type called ``name`` of ``kind`` (e.g. a FUNC for fentry)."""
        ids = self.find_types(name, frozenset({kind}))
        if not ids:
            raise BtfFieldError(f"no {KIND_NAMES.get(kind, kind)} named '{name}' in BTF "
                                f"{self.source}", struct_name=name)
        return ids[0]

    def find_struct(self, name: str) -> int:
        """Type id of the struct/union (or typedef of one) called ``name``."""
        ids = self.find_types(name, COMPOSITE_KINDS)
        if ids:
            # Prefer a complete definition (vmlinux can hold a zero-member duplicate).
            return max(ids, key=lambda tid: (self._raw(tid)[2] > 0, -tid))
        for typedef_id in self.find_types(name, frozenset({KIND_TYPEDEF})):
            target = self.strip(typedef_id)
            if target and self._raw(target)[1] in COMPOSITE_KINDS:
                return target
        raise BtfFieldError(f"struct '{name}' not found in BTF {self.source}",
                            struct_name=name)

    def has_struct(self, name: str) -> bool:
        try:
            self.find_struct(name)
        except BtfFieldError:
            return False
        return True

    # ---- member resolution ------------------------------------------------------------

    def _find_member(self, type_id: int, name: str) -> tuple[int, Member] | None:
        """(bit offset, member) of ``name`` in ``type_id``, looking through anonymous members."""
        anonymous: list[Member] = []
        for member in self.members(type_id):
            if member.name == name:
                return member.bit_offset, member
            if not member.name:
                anonymous.append(member)
        for member in anonymous:
            inner = self.strip(member.type_id)
            if inner and self._raw(inner)[1] in COMPOSITE_KINDS:
                found = self._find_member(inner, name)
                if found is not None:
                    return member.bit_offset + found[0], found[1]
        return None

    def _find_alias(self, type_id: int, name: str) -> tuple[int, Member] | None:
        for prefix, container, inner_prefix in MEMBER_ALIASES:
            if not name.startswith(prefix):
                continue
            outer = self._find_member(type_id, container)
            if outer is None:
                continue
            inner = self.strip(outer[1].type_id)
            if not inner or self._raw(inner)[1] not in COMPOSITE_KINDS:
                continue
            found = self._find_member(inner, inner_prefix + name[len(prefix):])
            if found is not None:
                return outer[0] + found[0], found[1]
        return None

    def field(self, struct_name: str, path: str | None = None, *,
              allow_bitfield: bool = False) -> Field:
        """Resolve ``struct_name`` + dotted ``path`` (or one "struct.a.b" string)."""
        if path is None:
            struct_name, path = (struct_name.split(".", 1) + [""])[:2]
        if not struct_name or not path:
            raise BtfFieldError(f"field path '{struct_name}.{path or ''}' must name a struct and "
                                f"at least one member", struct_name=struct_name,
                                field_path=path or "")
        full = f"{struct_name}.{path}"
        current = self.find_struct(struct_name)
        bit_offset = 0
        member: Member | None = None
        walked: list[str] = []
        for part in path.split("."):
            if member is not None:
                current = self.strip(member.type_id)
                if current == 0 or self._raw(current)[1] not in COMPOSITE_KINDS:
                    raise BtfFieldError(
                        f"cannot resolve '{full}': '{struct_name}.{'.'.join(walked)}' is not a "
                        f"struct or union, so it has no member '{part}'",
                        struct_name=struct_name, field_path=path)
                if member.bitfield_size:
                    raise BtfFieldError(f"cannot resolve '{full}': bitfield on the way",
                                        struct_name=struct_name, field_path=path)
            if not part:
                raise BtfFieldError(f"field path '{full}' has an empty component",
                                    struct_name=struct_name, field_path=path)
            found = self._find_member(current, part)
            if found is None:
                found = self._find_alias(current, part)
            if found is None:
                where = self.name(current) or f"<anonymous id {current}>"
                raise BtfFieldError(
                    f"struct '{struct_name}' has no field '{path}' (no member '{part}' in "
                    f"'{where}')", struct_name=struct_name, field_path=path)
            relative, member = found
            bit_offset += relative
            walked.append(part)
        if member is None:
            raise BtfFieldError(f"field path '{struct_name}.{path}' names no member", struct_name=struct_name,
                                field_path=path)
        resolved = self.strip(member.type_id)
        kind_name = KIND_NAMES.get(self.kind(resolved), "?")
        if member.bitfield_size:
            if not allow_bitfield:
                raise BtfFieldError(
                    f"field '{full}' is a bitfield ({member.bitfield_size} bits at bit "
                    f"{bit_offset}); pass allow_bitfield=True to get it",
                    struct_name=struct_name, field_path=path)
            return Field(struct_name, path, bit_offset // 8, self.type_size(member.type_id),
                         bit_offset, member.bitfield_size, member.type_id, kind_name)
        if bit_offset % 8:
            raise BtfFieldError(f"field '{full}' starts at bit {bit_offset}, not on a byte",
                                struct_name=struct_name, field_path=path)
        return Field(struct_name, path, bit_offset // 8, self.type_size(member.type_id),
                     bit_offset, 0, member.type_id, kind_name)

    def member_offset(self, struct_name: str, path: str | None = None) -> int:
        """Byte offset of a member (dotted paths allowed); see :meth:`field` for the size."""
        return self.field(struct_name, path).offset

    def member_size(self, struct_name: str, path: str | None = None) -> int:
        return self.field(struct_name, path).size

    def struct_size(self, struct_name: str) -> int:
        return self.type_size(self.find_struct(struct_name))


def _parse_header(data: bytes, source: str) -> tuple[BtfHeader, str]:
    if len(data) < HEADER_MIN_LEN:
        raise BtfFormatError(f"{source}: {len(data)} bytes is too short for a BTF header "
                             f"({HEADER_MIN_LEN})")
    for endian in ("<", ">"):
        (magic,) = struct.unpack_from(endian + "H", data, 0)
        if magic == BTF_MAGIC:
            break
    else:
        raise BtfFormatError(f"{source}: magic 0x{data[0]:02x}{data[1]:02x} is not BTF "
                             f"(0x{BTF_MAGIC:x})")
    header = BtfHeader(magic, *struct.unpack_from(endian + "BBIIIII", data, 2))
    if header.version != 1:
        raise BtfFormatError(f"{source}: unsupported BTF version {header.version}")
    if header.hdr_len < HEADER_MIN_LEN or header.hdr_len > len(data):
        raise BtfFormatError(f"{source}: hdr_len {header.hdr_len} invalid")
    body = len(data) - header.hdr_len
    if header.type_off + header.type_len > body:
        raise BtfFormatError(f"{source}: type section (type_off={header.type_off}, "
                             f"type_len={header.type_len}) runs past the end ({body} bytes)")
    if header.str_off + header.str_len > body:
        raise BtfFormatError(f"{source}: string section (str_off={header.str_off}, "
                             f"str_len={header.str_len}) runs past the end ({body} bytes)")
    if header.type_len % 4:
        raise BtfFormatError(f"{source}: type_len {header.type_len} is not a multiple of 4")
    return header, endian


def _index_types(data: bytes, header: BtfHeader, endian: str, source: str) -> list[int]:
    """Absolute start of every type; index 0 stands for void."""
    info_at = struct.Struct(endian + "I").unpack_from
    trailers = KIND_TRAILER
    pos = header.hdr_len + header.type_off
    end = pos + header.type_len
    starts = [0]
    append = starts.append
    while pos < end:
        if pos + TYPE_HEADER_LEN > end:
            raise BtfFormatError(f"{source}: type id {len(starts)} header truncated at byte {pos}")
        (info,) = info_at(data, pos + 4)
        kind = (info >> 24) & 0x1F
        trailer = trailers.get(kind)
        if trailer is None:
            raise BtfFormatError(f"{source}: type id {len(starts)} has unknown kind {kind}")
        append(pos)
        pos += TYPE_HEADER_LEN + trailer[0] + trailer[1] * (info & 0xFFFF)
    if pos != end:
        raise BtfFormatError(f"{source}: last type (id {len(starts) - 1}) runs past type_len "
                             f"{header.type_len}")
    return starts


def offsets_to_macros(spec: dict[str, str], btf: Btf | None = None) -> list[str]:
    """``{"MACRO": "struct.field.path"}`` -> ``["-DMACRO=<byte offset>", ...]``.

    Every entry is resolved before failing, so one :class:`BtfFieldError` lists all
    the missing or unusable fields at once.
    """
    if btf is None:
        btf = Btf.load()
    flags: list[str] = []
    problems: list[str] = []
    for macro, path in spec.items():
        if not MACRO_NAME.match(macro):
            problems.append(f"macro name '{macro}' is not a C identifier")
            continue
        try:
            flags.append(f"-D{macro}={btf.field(path).offset}")
        except BtfFieldError as exc:
            problems.append(f"{macro}: {exc}")
    if problems:
        raise BtfFieldError(f"{len(problems)} of {len(spec)} BTF field(s) unresolved: "
                            + "; ".join(problems))
    return flags
