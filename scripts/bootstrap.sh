#!/usr/bin/env bash
# Set up this checkout on a Debian 12 machine, as root: distro packages, the BCC
# header-tree fallback, a virtualenv that sees the distro's bcc, pinned Python
# requirements and the collection path. Idempotent: a second run only checks.
#
#   bash scripts/bootstrap.sh          # normally called by run.sh
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$repo/.venv"
system_python=/usr/bin/python3
started=$EPOCHREALTIME
changed=()

say() { printf 'bootstrap: %s\n' "$*"; }
die() { printf 'bootstrap: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (the lab creates network namespaces and loads BPF programs)"
grep -qs '^ID=debian' /etc/os-release || die "this script supports Debian 12 only (/etc/os-release says otherwise)"
[ -r /sys/kernel/btf/vmlinux ] || die "the running kernel has no BTF (/sys/kernel/btf/vmlinux); LatScope reads struct offsets from it"

# --- distro packages ---------------------------------------------------------
packages=(
  python3 python3-venv python3-pip python3-bpfcc bpfcc-tools bpftool linux-headers-amd64
  redis-server redis-tools mariadb-server mariadb-client openssh-server openssh-client
  iproute2 iperf3 tcpdump procps git shellcheck python3-matplotlib chromium
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  changed+=(apt)
fi

# --- virtualenv over the distro interpreter (so `import bcc` works) ----------
if [ ! -x "$venv/bin/python" ] || ! grep -qs '^include-system-site-packages = true' "$venv/pyvenv.cfg" \
   || ! grep -qs "^home = /usr/bin\$" "$venv/pyvenv.cfg"; then
  say "creating $venv from $system_python"
  rm -rf "$venv"
  "$system_python" -m venv --system-site-packages "$venv"
  changed+=(venv)
fi

stamp="$venv/.requirements.sha256"
want=$(cat "$repo"/requirements/*.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing pinned Python requirements"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$repo/requirements/dev.txt"
  echo "$want" >"$stamp"
  changed+=(pip)
fi

# --- wheels of the collector's requirements, for lab hosts (no route to a package index) ---------
wheelhouse="$venv/wheelhouse"
if [ "$(cat "$wheelhouse/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
  say "downloading the collector's wheels for the lab"
  rm -rf "$wheelhouse"
  "$venv/bin/python" -m pip download -q --disable-pip-version-check --only-binary=:all: \
    -r "$repo/requirements/collector.txt" -d "$wheelhouse"
  echo "$want" >"$wheelhouse/.requirements.sha256"
  changed+=(wheelhouse)
fi

# --- ansible-test, in a venv of its own: its sanity tests pin their own tool versions --------
sanity_venv="$venv/ansible-test"
core_pin=$(grep -m1 '^ansible-core==' "$repo/requirements/dev.txt")
if [ "$(cat "$sanity_venv/.pin" 2>/dev/null)" != "$core_pin" ]; then
  say "creating the ansible-test venv ($core_pin)"
  rm -rf "$sanity_venv"
  "$system_python" -m venv "$sanity_venv"
  "$sanity_venv/bin/python" -m pip install -q --disable-pip-version-check "$core_pin"
  echo "$core_pin" >"$sanity_venv/.pin"
  changed+=(ansible-test)
fi
get_pip="$HOME/.ansible/test/cache/get_pip_24_2.py"
if ! cmp -s "$repo/scripts/ansible_test_get_pip.py" "$get_pip"; then
  mkdir -p "$(dirname "$get_pip")"
  cp "$repo/scripts/ansible_test_get_pip.py" "$get_pip"
  changed+=(get-pip)
fi

# --- ansible-lint and ansible-builder, in a venv of their own too (requirements/lint.txt) -------
lint_venv="$venv/ansible-lint"
lint_pin="$core_pin $(sha256sum "$repo/requirements/lint.txt" | cut -d' ' -f1)"
if [ "$(cat "$lint_venv/.pin" 2>/dev/null)" != "$lint_pin" ]; then
  say "creating the ansible-lint venv"
  rm -rf "$lint_venv"
  "$system_python" -m venv "$lint_venv"
  "$lint_venv/bin/python" -m pip install -q --disable-pip-version-check "$core_pin" -r "$repo/requirements/lint.txt"
  echo "$lint_pin" >"$lint_venv/.pin"
  changed+=(ansible-lint)
fi

# --- the collection on the import path ---------------------------------------
# Modules import shared code as ansible_collections.latscope.latscope.plugins.module_utils.*;
# the daemon and CLI do the same, so the checkout is linked in at that path.
collections="$venv/collections"
link="$collections/ansible_collections/latscope/latscope"
if [ "$(readlink "$link" 2>/dev/null)" != "$repo" ]; then
  mkdir -p "$(dirname "$link")"
  ln -sfn "$repo" "$link"
  changed+=(collection-link)
fi
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
pth="$site/latscope-dev.pth"
if [ "$(cat "$pth" 2>/dev/null)" != "$(printf '%s\n%s' "$repo" "$collections")" ]; then
  printf '%s\n%s\n' "$repo" "$collections" >"$pth"
  changed+=(pth)
fi
wrapper="$venv/bin/latscope"
wrapper_text=$(printf '#!/bin/sh\nexec "%s/bin/python" -m latscope "$@"' "$venv")
if [ "$(cat "$wrapper" 2>/dev/null)" != "$wrapper_text" ]; then
  printf '%s\n' "$wrapper_text" >"$wrapper"
  chmod 0755 "$wrapper"
  changed+=(cli)
fi

# --- BCC's header tree (struct layouts come from BTF, never from these) ------
headers=$("$venv/bin/latscope" headers --ensure) || die "no kernel header tree for BCC (see above)"
case $headers in built*) say "$headers"; changed+=(headers) ;; esac

elapsed=$(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
if [ ${#changed[@]} -eq 0 ]; then
  say "ready, nothing to change (${elapsed}s)"
else
  say "ready, changed: ${changed[*]} (${elapsed}s)"
fi
