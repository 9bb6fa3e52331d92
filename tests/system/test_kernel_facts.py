"""Kernel facts on the real host: BTF offsets and the capability probe (needs root)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ansible_collections.latscope.latscope.plugins.module_utils.kernel import mounts as kernel_mounts
from ansible_collections.latscope.latscope.plugins.module_utils.kernel.btf import VMLINUX_BTF, Btf, offsets_to_macros
from ansible_collections.latscope.latscope.plugins.module_utils.kernel.capabilities import (
    CGROUP_PREFIX, NETNS_PREFIX, PROG_NAME, REQUIRED_TRACEPOINTS, Syscalls, probe_capabilities,
)

REPO = Path(__file__).resolve().parents[2]
ROOT_REASON = "needs root (BPF syscalls, mounts, network namespaces)"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason=ROOT_REASON)
needs_btf = pytest.mark.skipif(not VMLINUX_BTF.exists(), reason=f"{VMLINUX_BTF} missing")

# Fields the observers use (DESIGN.md section 3), incl. anonymous unions and possible_net_t.
KNOWN_FIELDS = [
    "sk_buff.len", "sk_buff.dev", "sk_buff.sk", "sk_buff.head", "sk_buff.data", "sk_buff.cb",
    "sk_buff.network_header", "sk_buff.transport_header",
    "sock.__sk_common.skc_daddr", "sock.__sk_common.skc_num", "sock.sk_net", "sock.sk_net.net",
    "tcp_sock.snd_nxt", "tcp_sock.write_seq", "tcp_sock.copied_seq", "tcp_sock.rcv_nxt",
    "net_device.ifindex", "net_device.nd_net.net", "net.ns.inum", "net.net_cookie",
]


@pytest.fixture(scope="module")
def btf() -> Btf:
    return Btf.load()


@pytest.fixture(scope="module")
def raw_dump() -> str:
    result = subprocess.run(["bpftool", "btf", "dump", "file", str(VMLINUX_BTF), "format", "raw"],
                            capture_output=True, text=True, timeout=60, check=True)
    return result.stdout


def _bpftool_struct_members(dump: str, name: str) -> dict[str, int]:
    """Direct members of STRUCT ``name`` as bpftool prints them: name -> bit offset."""
    match = re.search(rf"^\[\d+\] STRUCT '{name}' size=\d+ vlen=\d+\n((?:\t.*\n)*)", dump, re.M)
    assert match, f"bpftool dump has no STRUCT '{name}'"
    members = {}
    for line in match.group(1).splitlines():
        m = re.match(r"\t'([^']+)' type_id=\d+ bits_offset=(\d+)", line)
        if m and m.group(1) != "(anon)":
            members[m.group(1)] = int(m.group(2))
    return members


@needs_btf
def test_btf_loads_fast():
    started = time.perf_counter()
    btf = Btf.load()
    btf.field("sk_buff.dev")
    elapsed = time.perf_counter() - started
    print(f"BTF load + first lookup: {elapsed:.3f} s ({btf.type_count} types)")
    assert elapsed < 1.0


@needs_btf
@pytest.mark.parametrize("path", KNOWN_FIELDS)
def test_known_fields_resolve(btf, path):
    field = btf.field(path)
    assert field.size > 0 and field.bit_size == 0


@needs_btf
@needs_root
@pytest.mark.parametrize("struct_name, member", [
    ("sk_buff", "len"), ("sk_buff", "sk"), ("sk_buff", "head"), ("sk_buff", "data"),
    ("tcp_sock", "snd_nxt"), ("net_device", "ifindex"),
])
def test_offsets_match_bpftool(btf, raw_dump, struct_name, member):
    bits = _bpftool_struct_members(raw_dump, struct_name)[member]
    assert btf.member_offset(struct_name, member) == bits // 8


@needs_btf
def test_sk_buff_dev_is_inside_an_anonymous_member(btf, raw_dump):
    assert "dev" not in _bpftool_struct_members(raw_dump, "sk_buff")
    assert btf.field("sk_buff.dev").kind == "PTR"


@needs_btf
def test_macros_report_every_missing_field(btf):
    assert offsets_to_macros({"SKB_LEN": "sk_buff.len"}, btf) == \
        [f"-DSKB_LEN={btf.member_offset('sk_buff', 'len')}"]
    with pytest.raises(Exception) as info:
        offsets_to_macros({"A": "sk_buff.no_such", "B": "no_such_struct.x"}, btf)
    assert "no_such" in str(info.value) and "no_such_struct" in str(info.value)


@needs_root
def test_mounts_are_idempotent():
    first = kernel_mounts.ensure_kernel_mounts()
    second = kernel_mounts.ensure_kernel_mounts()
    assert (first.tracefs, first.cgroup2) == (second.tracefs, second.cgroup2)
    assert second.mounted == ()
    assert (second.tracefs / "events").is_dir()
    assert (second.cgroup2 / "cgroup.procs").exists()


def _bpftool(kind: str) -> list[dict]:
    out = subprocess.run(["bpftool", "-j", kind, "show"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return json.loads(out or "[]")


def _our_programs() -> set[int]:
    return {p["id"] for p in _bpftool("prog") if p.get("name") == PROG_NAME.decode()}


@needs_root
def test_probe_on_this_host_leaves_nothing_behind():
    progs_before = {p["id"] for p in _bpftool("prog")}
    links_before = {link["id"] for link in _bpftool("link")}
    caps = probe_capabilities()
    progs_after = _bpftool("prog")
    links_after = _bpftool("link")
    print(f"probe took {caps.probe_seconds} s: {json.dumps(caps.as_dict())}")

    assert caps.btf is True
    assert caps.kprobes is False
    assert caps.hook_profile == "tracepoint", caps.profile_reason
    assert all(caps.tracepoints[name] for name in REQUIRED_TRACEPOINTS)
    assert caps.sock_ops and caps.cgroup_skb and caps.tracepoint_attach and caps.ringbuf
    assert caps.tracefs and caps.cgroup2
    json.dumps(caps.as_dict())

    # Nothing of ours survives; other programs (another lab on this host) may come and go.
    assert not _our_programs()
    new_progs = {p["id"] for p in progs_after} - progs_before
    assert not {p["id"] for p in progs_after if p["id"] in new_progs
                and p.get("name") == PROG_NAME.decode()}
    ours = {p["id"] for p in progs_after if p.get("name") == PROG_NAME.decode()}
    assert not [link for link in links_after if link["id"] not in links_before
                and link.get("prog_id") in ours]
    netns_dir = Path("/run/netns")
    if netns_dir.is_dir():
        assert not [p for p in netns_dir.iterdir() if p.name.startswith(NETNS_PREFIX)]
    assert not [p for p in Path(caps.cgroup2).iterdir() if p.name.startswith(CGROUP_PREFIX)]


@needs_root
def test_probe_inside_ip_netns_exec_mounts_what_it_needs():
    """``ip netns exec`` gives a fresh /sys: tracefs and cgroup2 must be found or mounted."""
    netns = f"kx-facts-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True, timeout=10)
    try:
        code = ("import json; from ansible_collections.latscope.latscope.plugins.module_utils.kernel.capabilities import probe_capabilities; "
                "print(json.dumps(probe_capabilities().as_dict()))")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        result = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code],
                                capture_output=True, text=True, timeout=60, env=env, check=False)
        assert result.returncode == 0, result.stderr
        facts = json.loads(result.stdout)
        assert facts["hook_profile"] == "tracepoint", facts["profile_reason"]
        assert facts["tracefs"] and facts["cgroup2"]
    finally:
        subprocess.run(["ip", "netns", "del", netns], timeout=10, check=False)
    assert not _our_programs()


@needs_root
def test_check_mode_facts_inside_ip_netns_exec_see_the_real_profile_and_leave_no_mount(tmp_path):
    """Check mode may not mount: it probes in a private mount namespace, so deploy.yml --check on a fresh
    host (no tracefs, no cgroup2 where it looks) predicts the real run instead of refusing the host."""
    netns = f"kx-check-{os.getpid()}"
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {"devices": False, "_ansible_check_mode": True}}))
    module = REPO / "plugins" / "modules" / "latscope_facts.py"
    script = (f"{sys.executable} {module} {args} && "
              "echo && echo mounts=$(grep -Ec ' - (tracefs|cgroup2) ' /proc/self/mountinfo)")
    subprocess.run(["ip", "netns", "add", netns], check=True, timeout=10)
    try:
        result = subprocess.run(["ip", "netns", "exec", netns, "sh", "-c", script], capture_output=True, text=True,
                                timeout=60, check=False)
    finally:
        subprocess.run(["ip", "netns", "del", netns], timeout=10, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    facts, mounts_line = json.loads(lines[-2]), lines[-1]
    assert facts["hook_profile"] == "tracepoint", facts["ansible_facts"]["latscope"]["profile_reason"]
    assert facts["changed"] is False
    assert mounts_line == "mounts=0"     # the shell that ran the module sees no mount of its
    assert not _our_programs()


@needs_root
def test_this_kernel_grants_the_grace_period_detach_waits_for():
    """Observer/FlowMetricsCollector.detach() wait with membarrier(2) GLOBAL for the program runs under way.

    On a kernel refusing it they fall back to a fixed pause; here it must be the real wait.
    """
    Syscalls().rcu_grace_period()
