"""What a systemd lab host is given before it boots (pure logic: the texts; the boot itself is a system test)."""

import re
from pathlib import Path

from latscope.lab.settings import LabSettings, plan
from latscope.lab.systemd_host import SSHD_UNIT, HostDirs, boot_script, cgroup_name, unit_texts

ROOT = Path("/run/latscope/lab-x")


def _host(name="host1", **raw):
    lab = plan(LabSettings.from_dict({"prefix": "x", "hosts": 2, "systemd_hosts": 2, **raw}))
    return lab.node(name)


def test_boot_script_keeps_the_machine_out_of_reach():
    node = _host()
    dirs = HostDirs(ROOT, node)
    script = boot_script("x", node, dirs)
    assert f"mount --bind {ROOT}/systemd/host1/etc-systemd-system /etc/systemd/system" in script
    assert "mount --bind /dev/null /dev/console" in script
    assert "mount -o remount,bind,ro /proc/sys" in script
    assert "mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run" in script
    assert "/sys/fs/cgroup/latscope-lab-x-host1/cgroup.procs" in script
    unit_path = re.search(r"SYSTEMD_UNIT_PATH=(\S+)", script).group(1).split(":")
    assert unit_path == ["/etc/systemd/system", "/run/systemd/system", f"{ROOT}/systemd/host1/units"]
    assert "container=" in script and "--unit=multi-user.target" in script


def test_each_host_has_its_own_directories_and_cgroup():
    one, two = _host("host1"), _host("host2")
    assert HostDirs(ROOT, one).etc_units != HostDirs(ROOT, two).etc_units
    names = {cgroup_name("x", one), cgroup_name("x", two), cgroup_name("y", one)}
    assert len(names) == 3


def test_sshd_is_a_service_wanted_by_the_stub_multi_user_target():
    units = unit_texts(_host(), Path("/run/latscope/lab-x/ssh/sshd_host1.conf"))
    assert f"Wants={SSHD_UNIT}" in units["multi-user.target"]
    sshd = units[SSHD_UNIT]
    assert "ExecStart=/usr/sbin/sshd -D -f /run/latscope/lab-x/ssh/sshd_host1.conf" in sshd
    assert "Type=notify" in sshd and "RuntimeDirectory=sshd" in sshd
    # stub targets: nothing of the distro's sysinit/basic wants comes with them
    assert "Wants=" not in units["basic.target"] and "udev" not in "".join(units.values())
