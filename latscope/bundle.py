"""``latscope bundle``: the code a host runs, as one reproducible archive.

The roles ship the collector as a single tar.gz built on the controller from
this collection: the ``latscope`` package, the shared ``plugins/module_utils``
(under their collection path, see docs/architecture.md), the BPF sources and
the pinned requirements. Entries are sorted, owned by root with fixed times and
modes, and the gzip header carries no time, so the same code gives the same
bytes: copying it is idempotent, and a host unpacks only when it changed.
Build output (``__pycache__``, ``*.pyc``) never travels.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parent.parent
# (directory or file in the collection, where it goes in the archive)
CONTENTS = (
    ("latscope", "latscope"),
    ("plugins/module_utils", "ansible_collections/latscope/latscope/plugins/module_utils"),
    ("files/bpf", "files/bpf"),
    ("requirements/collector.txt", "requirements/collector.txt"),
)
SKIP_PARTS = {"__pycache__"}
SKIP_SUFFIXES = {".pyc", ".pyo"}


def _files(root: Path) -> list[tuple[Path, str]]:
    found = []
    for source, target in CONTENTS:
        path = root / source
        if path.is_file():
            found.append((path, target))
            continue
        for item in sorted(path.rglob("*")):
            relative = item.relative_to(path)
            if item.is_file() and not SKIP_PARTS & set(relative.parts) and item.suffix not in SKIP_SUFFIXES:
                found.append((item, f"{target}/{relative.as_posix()}"))
    return sorted(found, key=lambda pair: pair[1])


def build(root: Path = SOURCE_ROOT) -> bytes:
    """The archive's bytes (deterministic)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for path, name in _files(root):
            data = path.read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
            archive.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as compressed:
        compressed.write(raw.getvalue())
    return out.getvalue()


def write(output: Path, root: Path = SOURCE_ROOT) -> dict:
    """Write ``output`` if its content differs; say whether it changed and its checksum."""
    data = build(root)
    digest = hashlib.sha256(data).hexdigest()
    changed = not output.exists() or hashlib.sha256(output.read_bytes()).hexdigest() != digest
    if changed:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(output)
    return {"changed": changed, "path": str(output), "sha256": digest, "files": len(_files(root))}


def main(argv: list[str] | None = None) -> int:
    import argparse  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="latscope bundle", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, type=Path, help="where to write the .tar.gz")
    args = parser.parse_args(argv)
    print(json.dumps(write(args.output)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
