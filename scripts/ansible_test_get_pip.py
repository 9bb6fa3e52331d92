"""Stand-in for pip's ``get-pip.py``, for ``ansible-test`` where its download host is unreachable.

``ansible-test sanity`` makes a virtualenv without pip for some tests and
bootstraps pip in it by running a cached ``get-pip.py`` (looked for at
``~/.ansible/test/cache/get_pip_<version>.py``), downloaded from a host that
machines limited to the package registries cannot reach. This script does the
same job from what is already here: the interpreter's bundled pip
(``ensurepip``), then ``pip install`` with the arguments ansible-test passes,
which fetches the pinned pip from the package index. Like get-pip.py it takes
``--no-setuptools`` and ``--no-wheel`` to leave those out.
"""

import ensurepip
import subprocess
import sys


OWN_OPTIONS = {"--no-setuptools": "setuptools", "--no-wheel": "wheel"}


def main() -> int:
    args = [arg for arg in sys.argv[1:] if arg not in OWN_OPTIONS]
    unwanted = [OWN_OPTIONS[arg] for arg in sys.argv[1:] if arg in OWN_OPTIONS]
    ensurepip.bootstrap(upgrade=True, default_pip=True)
    pip = [sys.executable, "-m", "pip"]
    status = subprocess.call(pip + ["install", *args])
    if status == 0 and unwanted:
        status = subprocess.call(pip + ["uninstall", "--yes", "--quiet", *unwanted])
    return status


if __name__ == "__main__":
    sys.exit(main())
