#!/usr/bin/env bash
# measure.yml on the deployed lab, for a flow between two hosts and one from a container (traffic=iperf3):
# each play succeeds, every observer's records are stored row for row, and the analysis the play ran (with the
# clocks synchronised) is materialised for them (verify_measure.yml). The host flow's HTML report is fetched to the
# controller; the container flow skips the report (analysis_report=false: rendering and fetching it takes ~30 s).
source ../setup_lab/lab.sh

run=$(date +%s)
measure() {
  local label=$1 session=$2 flow=$3 src_netns=$4 report=$5
  lab_play_ok "$label" latscope.latscope.measure -e "flow='$flow'" -e "session=$session" \
    -e "analysis_report=$report"
  grep -E "records per observer:|clocks \(offset" "$LAB_OUT/$label.out" | sed -E "s/^ *- *'?//; s/'?$//"
  lab_play_ok "verify_$label" verify_measure.yml -e "session=$session" -e "flow='$flow'" \
    -e "src_netns=$src_netns" -e "report=$report" -e min_records=500 -e min_bytes=50000000
  lab_check said "$LAB_OUT/verify_$label.out"
}

# 2 s at 300 Mbit/s is ~75 MB: ~1100 samples of 64 KiB each way (500 at least), over 50 MB sent.
measure host_flow "lt-host-$run" "src=host1 dst=host2 dport=5411 duration=2s traffic=iperf3 rate=300M" 0 true
measure container_flow "lt-ctr-$run" "src=host1-c1 dst=host2 dport=5412 duration=2s traffic=iperf3 rate=300M" 2 false
