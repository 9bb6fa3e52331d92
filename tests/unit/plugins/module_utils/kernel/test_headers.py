"""The merged header tree: built once, concurrently safe (real files in tmp_path)."""

from concurrent.futures import ThreadPoolExecutor

from ansible_collections.latscope.latscope.plugins.module_utils.kernel import headers


def _fake_packages(src):
    common = src / "linux-headers-6.1.0-9-common" / "include" / "linux"
    common.mkdir(parents=True)
    (common / "kconfig.h").write_text("/* kconfig */\n")
    arch = src / "linux-headers-6.1.0-9-amd64" / "include" / "generated"
    arch.mkdir(parents=True)
    (arch / "autoconf.h").write_text("/* generated */\n")


def test_merged_tree_has_both_parts_and_is_built_once(tmp_path):
    _fake_packages(tmp_path / "src")
    root = tmp_path / "root"
    release = "0.0.0-nonexistent"
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _i: headers.ensure_header_tree(release, root, tmp_path / "src"), range(4)))
    trees = {tree.path for tree, _changed in results}
    assert len(trees) == 1
    tree = trees.pop()
    assert (tree / "include" / "linux" / "kconfig.h").exists()
    assert (tree / "include" / "generated" / "autoconf.h").exists()
    assert sorted(p.name for p in root.iterdir()) == ["linux-headers-6.1.0-9-amd64"]   # no staging left behind
    again, changed = headers.ensure_header_tree(release, root, tmp_path / "src")
    assert again.path == tree and changed is False
    assert headers.bcc_environment(again) == {"BCC_KERNEL_SOURCE": str(tree)}
