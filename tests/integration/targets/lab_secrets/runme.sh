#!/usr/bin/env bash
# No secret of the lab (every value of its secrets file: Redis and MySQL passwords, the time-sync token) appears in
# what deploy.yml and measure.yml print with -vvv, in Ansible's log file, in the JUnit files of ansible-test's
# callback, or in any log on the lab's machines (collectors, Redis, MariaDB); the files that hold one at rest are
# private to their owner. The -vvv deploy is also a third idempotence check.
source ../setup_lab/lab.sh

export ANSIBLE_LOG_PATH=$LAB_OUT/ansible.log
lab_play_ok deploy_vvv latscope.latscope.deploy -vvv
lab_check changes "$LAB_OUT/deploy_vvv.out" --none
lab_play_ok measure_vvv latscope.latscope.measure -vvv -e analysis_report=false \
  -e "flow='src=host1-c1 dst=host2 dport=5421 duration=1s traffic=iperf3 rate=200M'" -e "session=lt-secrets-$(date +%s)"
grep -E "records per observer:" "$LAB_OUT/measure_vvv.out" | sed -E "s/^ *- *'?//; s/'?$//"

outputs=("$LAB_OUT"/deploy_vvv.out "$LAB_OUT"/measure_vvv.out "$ANSIBLE_LOG_PATH")
if [ -d "${JUNIT_OUTPUT_DIR:-}" ]; then
  outputs+=("$JUNIT_OUTPUT_DIR")
fi
lab_check secrets --secrets "$LAB_SECRETS" --output "${outputs[@]}" --min-outputs 3 --tree "$LAB_ROOT"
