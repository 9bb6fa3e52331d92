# shellcheck shell=bash
# Sourced by the lab_* targets' runme.sh (aliases: needs/target/setup_lab). Finds the lab, sets Ansible up the way
# this checkout runs its playbooks (its ansible.cfg; real SSH with the lab's pinned host keys), and gives the
# targets lab_play, lab_snapshot and lab_check.
#
# Where the lab is: ansible-test hands runme.sh none of our environment (PATH, HOME and its own variables only),
# so the runner names the lab in tests/integration/integration_config.yml, which ansible-test copies next to the
# targets:
#
#   latscope_lab_inventory: /run/latscope/lab-PREFIX/inventory
#
# tests/system/test_deploy.py writes it into the copy of the collection it runs ansible-test in. By hand: bring a
# lab up (latscope lab up), write that file into a copy of the collection at .../ansible_collections/latscope/
# latscope (in a checkout it is git-ignored), and run there, with a controller Python that has the collection's
# requirements (redis, PyMySQL: modules delegated to localhost run with it):
#
#   ansible-test integration --local --python-interpreter /path/to/.venv/bin/python \
#     --allow-destructive --allow-unsupported lab_deploy
#
# The targets expect a lab of 2 hosts with a container each, and run in the order
# lab_deploy, lab_measure, lab_bad_inputs, lab_secrets, lab_teardown.
# LATSCOPE_LAB_INVENTORY, when set, wins (a runme.sh run directly, outside ansible-test).

set -eu -o pipefail

SETUP_LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LAB_PYTHON=${ANSIBLE_TEST_PYTHON_INTERPRETER:-python3}
LAB_TARGET=$(basename "$PWD")

lab_fail() {
  printf 'FAILED (%s): %s\n' "$LAB_TARGET" "$*" >&2
  exit 1
}

# lab_check COMMAND ARG...: one of labcheck.py's checks; it prints what it verified, or fails the target.
lab_check() {
  "$LAB_PYTHON" "$SETUP_LAB_DIR/labcheck.py" "$@" || lab_fail "labcheck.py $1 (see above)"
}

if [ -z "${LATSCOPE_LAB_INVENTORY:-}" ]; then
  config=$SETUP_LAB_DIR/../../integration_config.yml
  [ -f "$config" ] || lab_fail "no lab: tests/integration/integration_config.yml is missing (see setup_lab/lab.sh)"
  LATSCOPE_LAB_INVENTORY=$("$LAB_PYTHON" "$SETUP_LAB_DIR/labcheck.py" config "$config" latscope_lab_inventory) \
    || lab_fail "no lab: set latscope_lab_inventory in $config"
fi
# The lab's inventory, its secrets file and its state directory (the machines' roots are under hosts/).
LAB_INVENTORY=$LATSCOPE_LAB_INVENTORY
LAB_SECRETS=$LAB_INVENTORY/group_vars/all/secrets.yml
# shellcheck disable=SC2034  # used by the targets
LAB_ROOT=$(dirname "$LAB_INVENTORY")
if [ ! -f "$LAB_INVENTORY/hosts.yml" ] || [ ! -f "$LAB_SECRETS" ]; then
  lab_fail "$LAB_INVENTORY is not the inventory of a lab that is up (no hosts.yml or secrets file)"
fi

# The collection under test: where ansible-test put it on the collections path, else this checkout.
if [ -n "${ANSIBLE_COLLECTIONS_PATH:-}" ]; then
  LAB_COLLECTION=${ANSIBLE_COLLECTIONS_PATH%%:*}/ansible_collections/latscope/latscope
else
  LAB_COLLECTION=$(cd "$SETUP_LAB_DIR/../../../.." && pwd)
fi
[ -f "$LAB_COLLECTION/galaxy.yml" ] || lab_fail "no collection at $LAB_COLLECTION"
export ANSIBLE_CONFIG=$LAB_COLLECTION/ansible.cfg
# Undo the settings of ansible-test that would make the playbooks run unlike a user's run: host key checking off
# (the lab pins every machine's key), a group missing from the inventory an error (deploy.yml targets
# bare_metal:vms; the lab has no VMs), handlers forced.
export ANSIBLE_HOST_KEY_CHECKING=True
unset ANSIBLE_HOST_PATTERN_MISMATCH ANSIBLE_FORCE_HANDLERS
OUTPUT_DIR=${OUTPUT_DIR:-$(mktemp -d)}
LAB_OUT=$OUTPUT_DIR/$LAB_TARGET
mkdir -p "$LAB_OUT"
# The analysis role fetches each session's HTML report here (by default it goes to ~/latscope-reports).
export LATSCOPE_REPORT_DIR=$LAB_OUT/reports

# lab_play LABEL PLAYBOOK [ARG...]: run PLAYBOOK (latscope.latscope.NAME, or a file of the target) on the lab.
# Its output goes to $LAB_OUT/LABEL.out; shown here are the command, its exit status and time, the recap, and
# on a failure the output's last lines (not with LAB_QUIET=1: a failure that is expected). Sets LAB_STATUS;
# never exits.
lab_play() {
  local label=$1 playbook=$2 started=$SECONDS
  shift 2
  LAB_STATUS=0
  ansible-playbook -i "$LAB_INVENTORY" "$playbook" "$@" >"$LAB_OUT/$label.out" 2>&1 || LAB_STATUS=$?
  printf '== %s: ansible-playbook %s %s -> exit %s in %s s\n' "$label" "$playbook" "$*" "$LAB_STATUS" \
    "$((SECONDS - started))"
  if [ "$LAB_STATUS" -ne 0 ]; then
    [ -n "${LAB_QUIET:-}" ] || tail -n 40 "$LAB_OUT/$label.out"
  else
    sed -n '/^PLAY RECAP/,$p' "$LAB_OUT/$label.out"
  fi
}

# lab_play_ok LABEL PLAYBOOK [ARG...]: lab_play, and the target fails unless the play succeeded.
lab_play_ok() {
  lab_play "$@"
  [ "$LAB_STATUS" -eq 0 ] || lab_fail "$2 failed (exit $LAB_STATUS; output: $LAB_OUT/$1.out)"
}

# What teardown.yml leaves on the manager (and a fresh lab's manager may have, when it was deployed and torn down
# before): the store stays - Redis keeps running under its supervisor, which logs to var/log/latscope - and so do the
# session reports, data like the store's. For labcheck.py nothing-deployed.
# shellcheck disable=SC2034  # used by the targets
LAB_KEEPS=(--keep "manager:/var/log/latscope" "manager:/var/log/latscope/redis.log" "manager:/var/lib/latscope"
           "manager:/var/lib/latscope/reports" "manager:/var/lib/latscope/reports/*"
           --keep-process "manager:-- redis-server ")

# lab_snapshot LABEL: what LatScope has on every machine (files under its root, its processes, the Redis files
# the manager role writes), in $LAB_OUT/LABEL.json.
lab_snapshot() {
  lab_play_ok "$1" "$SETUP_LAB_DIR/snapshot.yml" -e "snapshot_file=$LAB_OUT/$1.json"
}
