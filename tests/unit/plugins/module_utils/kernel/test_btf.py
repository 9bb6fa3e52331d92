"""The BTF parser against a small synthetic blob (pure logic, no kernel needed)."""

from __future__ import annotations

import struct

import pytest

from ansible_collections.latscope.latscope.plugins.module_utils.kernel.btf import (
    BTF_MAGIC, KIND_ARRAY, KIND_CONST, KIND_DATASEC, KIND_DECL_TAG, KIND_ENUM, KIND_ENUM64,
    KIND_FLOAT, KIND_FUNC, KIND_FUNC_PROTO, KIND_FWD, KIND_INT, KIND_PTR, KIND_RESTRICT,
    KIND_STRUCT, KIND_TYPE_TAG, KIND_TYPEDEF, KIND_UNION, KIND_VAR, KIND_VOLATILE, Btf,
    BtfFieldError, BtfFormatError, offsets_to_macros,
)


class BlobBuilder:
    """Writes BTF the way the kernel lays it out: header, type section, string section."""

    def __init__(self, endian: str = "<") -> None:
        self.endian = endian
        self.strings = bytearray(b"\0")
        self.types = bytearray()
        self.count = 0

    def s(self, name: str) -> int:
        if not name:
            return 0
        offset = len(self.strings)
        self.strings += name.encode() + b"\0"
        return offset

    def add(self, kind: int, name: str = "", vlen: int = 0, size_or_type: int = 0,
            kind_flag: int = 0, trailer: bytes = b"") -> int:
        info = (kind_flag << 31) | (kind << 24) | vlen
        self.types += struct.pack(self.endian + "III", self.s(name), info, size_or_type) + trailer
        self.count += 1
        return self.count

    def u32(self, *values: int) -> bytes:
        return struct.pack(self.endian + "I" * len(values), *values)

    def int_(self, name: str, size: int, bits: int | None = None, bit_off: int = 0) -> int:
        bits = size * 8 if bits is None else bits
        encoding = (1 << 24) | (bit_off << 16) | bits  # BTF_INT_SIGNED, offset, nr_bits
        return self.add(KIND_INT, name, 0, size, trailer=self.u32(encoding))

    def composite(self, kind: int, name: str, size: int,
                  members: list[tuple[str, int, int]], kind_flag: int = 0) -> int:
        trailer = b"".join(self.u32(self.s(m), t, off) for m, t, off in members)
        return self.add(kind, name, len(members), size, kind_flag, trailer)

    def blob(self) -> bytes:
        header = struct.pack(self.endian + "HBBIIIII", BTF_MAGIC, 1, 0, 24, 0, len(self.types),
                             len(self.types), len(self.strings))
        return header + bytes(self.types) + bytes(self.strings)


def build(endian: str = "<") -> bytes:
    b = BlobBuilder(endian)
    t_int = b.int_("int", 4)                                                    # 1
    t_uint = b.int_("unsigned int", 4)                                          # 2
    t_long = b.int_("long unsigned int", 8)                                     # 3
    # Every other kind first, so that a wrong skip would shift every later type.
    b.add(KIND_ENUM, "color", 2, 4, trailer=b.u32(b.s("RED"), 0, b.s("BLUE"), 1))
    b.add(KIND_ENUM64, "big", 1, 8, trailer=b.u32(b.s("HUGE"), 1, 2))
    proto = b.add(KIND_FUNC_PROTO, "", 2, t_int, trailer=b.u32(b.s("a"), t_int, b.s("b"), t_uint))
    b.add(KIND_FUNC, "do_thing", 0, proto)
    var = b.add(KIND_VAR, "some_var", 0, t_int, trailer=b.u32(1))
    b.add(KIND_DATASEC, ".data", 1, 4, trailer=b.u32(var, 0, 4))
    b.add(KIND_DECL_TAG, "tag", 0, t_int, trailer=b.u32(0xFFFFFFFF))
    b.add(KIND_TYPE_TAG, "user", 0, t_int)
    b.add(KIND_FLOAT, "double", 0, 8)
    b.add(KIND_FWD, "fwd_struct", 0, 0)
    b.add(KIND_VOLATILE, "", 0, t_int)
    b.add(KIND_RESTRICT, "", 0, t_int)
    inner = b.composite(KIND_STRUCT, "inner", 8, [("x", t_int, 0), ("y", t_uint, 32)])
    anon_union = b.composite(KIND_UNION, "", 8, [("u_a", t_int, 0), ("u_inner", inner, 0)])
    anon_struct = b.composite(KIND_STRUCT, "", 8, [("s_lo", t_uint, 0), ("s_hi", t_uint, 32)])
    inner_t = b.add(KIND_TYPEDEF, "inner_t", 0, inner)
    const_inner = b.add(KIND_CONST, "", 0, inner_t)
    ptr = b.add(KIND_PTR, "", 0, inner)
    arr = b.add(KIND_ARRAY, "", 0, 0, trailer=b.u32(t_int, t_int, 4))
    outer = b.composite(KIND_STRUCT, "outer", 64, [
        ("first", t_int, 0),
        ("", anon_union, 64),
        ("nested", const_inner, 128),
        ("", anon_struct, 192),
        ("ptr", ptr, 256),
        ("arr", arr, 320),
        ("flag", t_uint, (3 << 24) | 448),
        ("last", t_int, 480),
    ], kind_flag=1)
    b.add(KIND_TYPEDEF, "outer_t", 0, outer)
    bf3 = b.int_("bf3", 4, bits=3)
    b.composite(KIND_STRUCT, "old_bitfields", 4, [("three", bf3, 5)])
    b.composite(KIND_STRUCT, "dup", 0, [])
    b.composite(KIND_STRUCT, "dup", 4, [("real", t_int, 0)])
    net = b.composite(KIND_STRUCT, "net", 8, [("cookie", t_long, 0)])
    net_ptr = b.add(KIND_PTR, "", 0, net)
    possible_net = b.composite(KIND_STRUCT, "", 8, [("net", net_ptr, 0)])
    possible_net_t = b.add(KIND_TYPEDEF, "possible_net_t", 0, possible_net)
    sock_common = b.composite(KIND_STRUCT, "sock_common", 16,
                              [("skc_daddr", t_uint, 0), ("skc_net", possible_net_t, 64)])
    b.composite(KIND_STRUCT, "sock", 24, [("__sk_common", sock_common, 0), ("sk_own", t_int, 128)])
    b.composite(KIND_STRUCT, "after_all", 4, [("z", t_int, 0)])
    return b.blob()


@pytest.fixture(scope="module")
def btf() -> Btf:
    return Btf.from_bytes(build(), source="synthetic")


@pytest.mark.parametrize("path, offset, size", [
    ("outer.first", 0, 4),
    ("outer.u_a", 8, 4),                  # inside an anonymous union
    ("outer.u_inner.y", 12, 4),           # anonymous union -> named struct
    ("outer.nested.y", 20, 4),            # through const + typedef
    ("outer.s_hi", 28, 4),                # inside an anonymous struct
    ("outer.ptr", 32, 8),                 # pointer size from "long unsigned int"
    ("outer.arr", 40, 16),
    ("outer.last", 60, 4),
    ("after_all.z", 0, 4),                # found only if every kind was skipped right
    ("sock.__sk_common.skc_daddr", 0, 4),
    ("sock.sk_net", 8, 8),                # the kernel's sk_X -> __sk_common.skc_X alias
    ("sock.sk_net.net", 8, 8),
    ("sock.sk_own", 16, 4),
])
def test_offsets(btf, path, offset, size):
    field = btf.field(path)
    assert (field.offset, field.size) == (offset, size)
    struct_name, rest = (path.split(".", 1) + [""])[:2]
    assert btf.member_offset(struct_name, rest) == offset


def test_every_type_indexed(btf):
    assert btf.type_count == 35
    assert btf.find_type("do_thing", KIND_FUNC) > 0


def test_typedef_of_struct_and_duplicates(btf):
    assert btf.member_offset("outer_t", "last") == 60
    assert btf.member_offset("dup", "real") == 0  # the complete definition wins
    assert btf.struct_size("outer") == 64


def test_bitfields_refused_unless_asked(btf):
    with pytest.raises(BtfFieldError, match=r"outer\.flag.*bitfield"):
        btf.field("outer.flag")
    field = btf.field("outer.flag", allow_bitfield=True)
    assert (field.bit_offset, field.bit_size, field.offset) == (448, 3, 56)
    old = btf.field("old_bitfields.three", allow_bitfield=True)  # INT-encoded (kind_flag 0)
    assert (old.bit_offset, old.bit_size) == (5, 3)
    with pytest.raises(BtfFieldError, match="bitfield"):
        btf.field("old_bitfields.three")


def test_missing_field_names_struct_and_field(btf):
    with pytest.raises(BtfFieldError) as info:
        btf.member_offset("outer", "nested.nope")
    assert "outer" in str(info.value) and "nested.nope" in str(info.value)
    assert (info.value.struct_name, info.value.field_path) == ("outer", "nested.nope")


def test_missing_struct_names_it(btf):
    with pytest.raises(BtfFieldError, match="'no_such_struct'"):
        btf.field("no_such_struct.x")


def test_path_through_a_scalar(btf):
    with pytest.raises(BtfFieldError, match=r"outer\.first.*not a struct"):
        btf.field("outer.first.x")


def test_macros_resolve_all_then_report_every_problem(btf):
    assert offsets_to_macros({"A": "outer.last", "B": "outer.u_a"}, btf) == ["-DA=60", "-DB=8"]
    with pytest.raises(BtfFieldError) as info:
        offsets_to_macros({"A": "outer.last", "B": "outer.gone", "C": "nothing.here",
                           "not valid": "outer.first"}, btf)
    message = str(info.value)
    assert "3 of 4" in message
    assert "B:" in message and "gone" in message
    assert "C:" in message and "nothing" in message
    assert "'not valid'" in message


def test_big_endian_blob():
    btf = Btf.from_bytes(build(">"))
    assert btf.member_offset("outer", "u_inner.y") == 12
    assert btf.member_offset("after_all", "z") == 0


@pytest.mark.parametrize("mutate, word", [
    (lambda blob: blob[:10], "too short"),
    (lambda blob: b"\0\0" + blob[2:], "magic"),
    (lambda blob: blob[:-40], "runs past"),
    (lambda blob: blob[:24 + 4] + struct.pack("<I", 31 << 24) + blob[24 + 8:], "unknown kind"),
])
def test_malformed_blobs(mutate, word):
    with pytest.raises(BtfFormatError, match=word):
        Btf.from_bytes(mutate(build()))
