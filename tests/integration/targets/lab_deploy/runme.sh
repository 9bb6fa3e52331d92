#!/usr/bin/env bash
# deploy.yml on a fresh lab. Check mode first: it predicts changes on every machine and changes nothing there.
# The first run then makes exactly the changes check mode predicted, plus those check mode cannot make
# (check_mode_gaps.yml, each with its reason); the second run changes nothing; a collector runs on every
# observed host and its heartbeat reaches the control plane. Neither check mode's --diff nor the runs show a secret.
source ../setup_lab/lab.sh

lab_snapshot fresh
lab_check nothing-deployed "$LAB_OUT/fresh.json" "${LAB_KEEPS[@]}"

lab_play_ok check latscope.latscope.deploy --check --diff
lab_check changes "$LAB_OUT/check.out" --some
lab_snapshot after_check
lab_check same "$LAB_OUT/fresh.json" "$LAB_OUT/after_check.json"

lab_play_ok first latscope.latscope.deploy
lab_check prediction "$LAB_OUT/check.out" "$LAB_OUT/first.out" --gaps check_mode_gaps.yml

lab_play_ok second latscope.latscope.deploy
lab_check changes "$LAB_OUT/second.out" --none

lab_play_ok collectors verify_collectors.yml
lab_check secrets --secrets "$LAB_SECRETS" --output "$LAB_OUT"/{check,first,second}.out --min-outputs 3 \
  --tree "$LAB_ROOT/hosts"
