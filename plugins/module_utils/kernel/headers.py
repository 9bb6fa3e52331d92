"""Find, or build, the kernel header tree BCC needs for its preamble.

BCC compiles every program against a kernel header tree. It looks in
``/lib/modules/$(uname -r)/build`` unless ``BCC_KERNEL_SOURCE`` names another
tree. Struct layouts never come from these headers (they come from BTF, see
``btf.py`` beside this file), so any recent tree serves: when the running kernel
has no header package of its own, we use the distro's generic one.

Debian splits a header package in two directories, an arch part
(``linux-headers-X-amd64``: generated config and headers) and a common part
(``linux-headers-X-common``: the source headers), which BCC cannot combine
when pointed at one directory. ``ensure_header_tree`` builds a merged tree of
symlinks (``cp -rs``: 60 MB of links, half a second) under ``HEADER_ROOT`` and
returns it; ``bcc_environment`` gives the environment BCC must run with.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

HEADER_ROOT = Path("/var/lib/latscope/kernel-headers")
SRC_ROOT = Path("/usr/src")
_ARCH_DIR = re.compile(r"^linux-headers-(?P<version>\d+\.\d+\.\d+-\d+)-(?P<flavour>[a-z0-9]+)$")


class HeaderTreeError(RuntimeError):
    """No usable header tree exists and none can be built."""


@dataclass(frozen=True)
class HeaderTree:
    """Where BCC's headers come from on this host."""

    path: Path
    source: str  # "running-kernel", "merged-generic" or "generic"

    def as_dict(self) -> dict[str, str]:
        return {"path": str(self.path), "source": self.source}


def running_kernel_build_dir(release: str | None = None) -> Path:
    return Path("/lib/modules") / (release or platform.release()) / "build"


def find_generic_package(src_root: Path = SRC_ROOT) -> tuple[Path, Path | None] | None:
    """Return the newest (arch dir, common dir or None) under ``src_root``."""
    candidates: list[tuple[tuple[int, ...], Path]] = []
    if not src_root.is_dir():
        return None
    for entry in src_root.iterdir():
        match = _ARCH_DIR.match(entry.name)
        if not match or match.group("flavour") == "common":
            continue
        if not (entry / "include" / "generated").is_dir() and not (entry / ".config").is_file():
            continue
        version = tuple(int(part) for part in re.split(r"[.-]", match.group("version")))
        candidates.append((version, entry))
    if not candidates:
        return None
    arch_dir = max(candidates)[1]
    version = _ARCH_DIR.match(arch_dir.name).group("version")  # type: ignore[union-attr]
    common = src_root / f"linux-headers-{version}-common"
    return arch_dir, (common if common.is_dir() else None)


def find_header_tree(release: str | None = None, root: Path = HEADER_ROOT,
                     src_root: Path = SRC_ROOT) -> HeaderTree | None:
    """The tree BCC should use, without building anything; None if there is none."""
    build = running_kernel_build_dir(release)
    if (build / "include").is_dir():
        return HeaderTree(build, "running-kernel")
    found = find_generic_package(src_root)
    if found is None:
        return None
    arch_dir, common = found
    if common is None:
        return HeaderTree(arch_dir, "generic")
    merged = root / arch_dir.name
    if (merged / "include" / "linux" / "kconfig.h").exists() and (merged / ".complete").exists():
        return HeaderTree(merged, "merged-generic")
    return None


def ensure_header_tree(release: str | None = None, root: Path = HEADER_ROOT,
                       src_root: Path = SRC_ROOT) -> tuple[HeaderTree, bool]:
    """Return (tree, changed); build the merged tree when it is missing."""
    existing = find_header_tree(release, root, src_root)
    if existing is not None:
        return existing, False
    found = find_generic_package(src_root)
    if found is None:
        raise HeaderTreeError(
            f"no kernel header tree: {running_kernel_build_dir(release)} is missing and no "
            f"linux-headers-* package is installed under {src_root} (install linux-headers-amd64)")
    arch_dir, common = found
    if common is None:
        return HeaderTree(arch_dir, "generic"), False
    merged = root / arch_dir.name
    root.mkdir(parents=True, exist_ok=True)
    # A private staging directory, renamed into place: several collectors on one machine (the lab's
    # hosts share a filesystem) may build at once, and the first complete tree wins.
    staging = Path(tempfile.mkdtemp(prefix=arch_dir.name + ".", suffix=".partial", dir=root)) / "tree"
    try:
        # Links, not copies: the packages stay the single owner of the files.
        subprocess.run(["cp", "-rs", str(common), str(staging)], check=True)
        subprocess.run(["cp", "-rs", "--remove-destination", f"{arch_dir}/.", str(staging)], check=True)
        (staging / ".complete").write_text(f"{common}\n{arch_dir}\n")
        if (merged / ".complete").exists():
            return HeaderTree(merged, "merged-generic"), False
        shutil.rmtree(merged, ignore_errors=True)
        try:
            staging.rename(merged)
        except OSError:
            if not (merged / ".complete").exists():
                raise
            return HeaderTree(merged, "merged-generic"), False
    finally:
        shutil.rmtree(staging.parent, ignore_errors=True)
    return HeaderTree(merged, "merged-generic"), True


def bcc_environment(tree: HeaderTree | None) -> dict[str, str]:
    """Environment variables BCC needs for ``tree`` (empty for the running kernel's own)."""
    if tree is None or tree.source == "running-kernel":
        return {}
    return {"BCC_KERNEL_SOURCE": str(tree.path)}


def prepare_bcc(release: str | None = None) -> HeaderTree | None:
    """Point BCC at a header tree before ``import bcc`` compiles anything."""
    tree = find_header_tree(release)
    os.environ.update(bcc_environment(tree))
    return tree
