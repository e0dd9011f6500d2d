#!/usr/bin/env bash
# Builds the libFuzzer targets (stable toolchain: SanitizerCoverage through -C passes, the
# libFuzzer runtime compiled by libfuzzer-sys with the system C++ compiler) and runs each for
# the given number of seconds, starting from the committed corpus. New inputs go to a scratch
# directory; merge them into fuzz/corpus/<target> by hand (see fuzz/README.md).
# Usage: bash fuzz/run.sh [seconds per target]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
host=$(rustc -vV | sed -n 's/host: //p')
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
cargo build --release --manifest-path fuzz/Cargo.toml --target-dir target/fuzz --target "$host"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in record_decoder recovery; do
  mkdir -p "$scratch/$target" "$scratch/artifacts"
  inputs=$(find "fuzz/corpus/$target" -type f | wc -l)
  # -rss_limit_mb and -malloc_limit_mb turn unbounded allocation into a failure.
  "target/fuzz/$host/release/$target" "$scratch/$target" "fuzz/corpus/$target" \
    -max_total_time="$seconds" -rss_limit_mb=1024 -malloc_limit_mb=256 -max_len=8192 \
    -artifact_prefix="$scratch/artifacts/" -print_final_stats=1 > "$scratch/$target.log" 2>&1 || {
      tail -60 "$scratch/$target.log"
      echo "fuzz $target: FAILED (artifacts above)"
      exit 1
    }
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/$target.log")
  cov=$(grep -o 'cov: [0-9]*' "$scratch/$target.log" | tail -1)
  found=$(find "$scratch/$target" -type f | wc -l)
  echo "fuzz $target: $runs executions in ${seconds}s from $inputs corpus inputs, $cov, $found new inputs, no failure"
done
