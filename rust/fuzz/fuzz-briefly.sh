#!/usr/bin/env bash
# Runs every fuzz target of rust/fuzz for a short while under libFuzzer, coverage-guided:
# cargo-fuzz on the stable toolchain, without a sanitizer (-s none: AddressSanitizer
# needs nightly) but with debug assertions and overflow checks (-a). Seeded with
# rust/fuzz/corpus/<target>/; what a run finds is kept in a temporary directory and
# dropped. A crash fails the script; libFuzzer's report and the input that crashed
# (rust/fuzz/libfuzzer/artifacts/<target>/) are printed.
#
#   NOVACRON_FUZZ_SECONDS  seconds per target (default 10: the whole test command stays under ~20 min)
#
# The README's test command runs it after `cargo test`; a long run is the README's
# "Fuzzing the page engine".
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
fuzz_dir="$here/libfuzzer"
seconds="${NOVACRON_FUZZ_SECONDS:-10}"
cargo_fuzz_version=0.13.2

if ! cargo fuzz --version 2>/dev/null | grep -q "$cargo_fuzz_version"; then
  echo "fuzz-briefly: cargo install cargo-fuzz@$cargo_fuzz_version"
  cargo install --quiet --locked "cargo-fuzz@$cargo_fuzz_version"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
flags=(-s none -O -a --fuzz-dir "$fuzz_dir")
cargo fuzz build "${flags[@]}"

for target in $(cargo fuzz list --fuzz-dir "$fuzz_dir"); do
  case "$target" in
    split | channel) max_len=65536 ;; # streams: several frames
    *) max_len=8192 ;;
  esac
  mkdir -p "$work/$target"
  if ! cargo fuzz run "${flags[@]}" "$target" "$work/$target" "$here/corpus/$target" -- \
    -max_total_time="$seconds" -max_len="$max_len" -timeout=30 -print_final_stats=1 \
    >"$work/$target.log" 2>&1; then
    grep -m 1 -A 4 "panicked at" "$work/$target.log" || tail -n 40 "$work/$target.log"
    sed -n '/^Failing input/,/^Minimize/p' "$work/$target.log"
    echo "fuzz-briefly: $target failed; the input is under $fuzz_dir/artifacts/$target/" >&2
    exit 1
  fi
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$target.log")"
  last="$(grep -E '^#[0-9]+' "$work/$target.log" | tail -n 1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' || true)"
  echo "fuzz-briefly: $target: ${runs:-?} runs in ${seconds} s, no failure (${last:-no coverage line})"
done
