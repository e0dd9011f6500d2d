#!/usr/bin/env bash
# The simulations with count-bounded sizes, so that their printed figures are a function of
# the seeds alone: run before and after a change to the storage paths and diff the summaries
# (`grep -h '^sim\|^engine sim\|^raft crash\|replayed\|caught' OUT/*.log`).
# Usage: scripts/sim-figures.sh OUT_DIR   (takes about 8 minutes in release on 2 cores)
set -euo pipefail
out="${1:?output directory}"
mkdir -p "$out"
cd "$(dirname "$0")/.."
run() {
  local name="$1"; shift
  local start; start=$(date +%s)
  { echo "# commit: $(git rev-parse HEAD)"; echo "# command: $*"; env "$@" 2>&1; \
    echo "# wall: $(( $(date +%s) - start )) s"; } >"$out/$name.log"
}
run sim_random KEEL_SIM_CYCLES=40000 KEEL_SIM_SECONDS=100000 \
  cargo test --release -p keel-suite --test sim_crash sim_random -- --nocapture
run sim_replay KEEL_SIM_REPLAY_FIRST=1 KEEL_SIM_REPLAY_COUNT=200 KEEL_SIM_REPLAY_SECONDS=100000 \
  cargo test --release -p keel-suite --test sim_crash sim_a_seed_replays_exactly -- --nocapture
run sim_exhaustive KEEL_SIM_EXHAUSTIVE=full KEEL_SIM_SCENARIOS=10 KEEL_SIM_EXHAUSTIVE_SECONDS=100000 \
  cargo test --release -p keel-suite --test sim_crash sim_exhaustive -- --nocapture
run sim_catches cargo test --release -p keel-suite --test sim_crash sim_catches -- --nocapture --test-threads=1
run sim_engine KEEL_SIM_ENGINE_SEEDS=300 cargo test --release -p keel --test sim_engine -- --nocapture
run raft_crash KEEL_RAFT_CRASH_SEEDS=500 KEEL_RAFT_CRASH_SECONDS=100000 \
  cargo test --release -p keel-raft --test raft_crash -- --nocapture
grep -h '^sim\|^engine sim\|^raft crash\|replayed\|caught' "$out"/*.log
