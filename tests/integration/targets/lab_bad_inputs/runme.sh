#!/usr/bin/env bash
# Bad inputs are refused before anything runs on the machines, each with one error naming the field:
# a flow whose port is out of range, a flow to a host the inventory does not have (measure.yml), and deploy.yml
# with a required variable missing from the inventory. Afterwards the machines are as before (snapshots: files,
# processes, Redis's files) and no observer heard of the refused sessions.
source ../setup_lab/lab.sh

lab_snapshot before

refuse() {
  local label=$1 field=$2
  shift 2
  LAB_QUIET=1 lab_play "$label" "$@"
  lab_check refused "$LAB_OUT/$label.out" --status "$LAB_STATUS" --field "$field"
}

refuse bad_port "flow.dport: must be at most 65535" latscope.latscope.measure \
  -e "flow='src=host1 dst=host2 dport=70000 duration=1s'" -e session=lt-bad-port
refuse unknown_host "flow.dst: is not a host of the inventory" latscope.latscope.measure \
  -e "flow='src=host1 dst=host9'" -e session=lt-bad-host

# The collectors' MySQL password, left out of a copy of the lab's inventory (private, removed on exit).
missing=$LAB_OUT/inventory-without-collector-password
trap 'rm -rf "$missing"' EXIT
lab_check inventory-without "$LAB_INVENTORY" "$missing" --key latscope_mysql_collector_password
LAB_INVENTORY=$missing refuse missing_variable "'latscope_mysql_collector_password' is undefined" \
  latscope.latscope.deploy
rm -rf "$missing"

lab_snapshot after
lab_check same "$LAB_OUT/before.json" "$LAB_OUT/after.json"
lab_play_ok no_session verify_no_session.yml -e '{"sessions": ["lt-bad-port", "lt-bad-host"]}'
lab_check said "$LAB_OUT/no_session.out"
