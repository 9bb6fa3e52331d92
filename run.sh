#!/usr/bin/env bash
# The two commands of the README. Each sets up this machine first (idempotent), then:
#   bash run.sh demo    the main job on the local lab
#   bash run.sh test    the whole test suite (what CI runs)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

case "${1:-}" in
  demo) shift; bash scripts/bootstrap.sh; exec .venv/bin/latscope demo "$@" ;;
  test) shift; bash scripts/bootstrap.sh; exec .venv/bin/python -m pytest "$@" ;;
  *) echo "usage: bash run.sh demo|test [args]" >&2; exit 2 ;;
esac
