#!/usr/bin/env bash
# teardown.yml removes everything deploy.yml put on the machines (snapshot over SSH): no collector or supervisor
# runs, no file and no LatScope directory is left under any machine's root (code, configuration, state, logs, pid
# files), no systemd unit; the manager keeps the store - Redis (its supervisor and log) and MariaDB keep serving -
# and the session reports (LAB_KEEPS in setup_lab/lab.sh). A second teardown changes nothing.
source ../setup_lab/lab.sh

lab_play_ok teardown latscope.latscope.teardown
lab_check changes "$LAB_OUT/teardown.out" --some
lab_snapshot after
lab_check nothing-deployed "$LAB_OUT/after.json" "${LAB_KEEPS[@]}"
lab_play_ok verify_servers verify_servers.yml
lab_check said "$LAB_OUT/verify_servers.out"

lab_play_ok teardown_again latscope.latscope.teardown
lab_check changes "$LAB_OUT/teardown_again.out" --none
