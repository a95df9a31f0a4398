#!/usr/bin/env bash
# Run every cargo fuzz target for a while (default 20 s each; `scripts/fuzz.sh 600` for the
# 10-minute local runs), one at a time on one core, over the corpus kept in fuzz/corpus/.
# scripts/test.sh (and so CI) runs it briefly after `cargo test`; see fuzz/README.md.
#
# Usage: scripts/fuzz.sh [SECONDS [TARGET...]]   every target (or the ones named) SECONDS each
#        scripts/fuzz.sh --cmin                   minimise fuzz/corpus/ again before committing
# Environment:
#   SLUICE_FUZZ_KEEP=1  (default) new inputs land in fuzz/corpus/<target>; 0 puts them in a
#                       temporary directory, removed on exit, and leaves the kept corpus as is.
#   CARGO_TARGET_DIR    where the instrumented build goes (default fuzz/target).
#
# Needs cargo-fuzz (installed with `cargo install cargo-fuzz --locked` when missing) and a C++
# compiler (libfuzzer-sys builds libFuzzer). The stable toolchain is used with
# RUSTC_BOOTSTRAP=1 for the sanitizer-coverage flags. Without sanitizers (`-s none`): Sluice
# forbids unsafe code, and the panics and assertions (debug assertions and overflow checks are
# on) are what the targets look for.
# A crash or a timeout leaves its input in fuzz/artifacts/<target>/, prints its path (and its
# bytes in base64, for CI logs whose checkout is gone) and fails the script.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz missing: cargo install cargo-fuzz --locked" >&2
  cargo install cargo-fuzz --locked
fi
if [ "${1:-}" = "--cmin" ]; then
  for target in $(cargo fuzz list); do
    cargo fuzz cmin -s none "$target" "corpus/$target"
  done
  exit 0
fi
seconds="${1:-20}"
[[ $seconds =~ ^[0-9]+$ ]] || { echo "usage: $0 [SECONDS [TARGET...]] | --cmin" >&2; exit 2; }
targets=("${@:2}")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# The default profile: release, with debug assertions and overflow checks. `--dev` builds in
# half the CPU time but runs about 40x slower: 15 s would not even replay the kept corpus.
cargo fuzz build -s none
for target in "${targets[@]}"; do
  echo "== fuzz $target for ${seconds}s"
  mkdir -p "corpus/$target" "artifacts/$target"
  # libFuzzer writes new inputs to the first corpus directory and only reads the others.
  corpora=("corpus/$target")
  if [ "${SLUICE_FUZZ_KEEP:-1}" = 0 ]; then
    mkdir -p "$scratch/new/$target"
    corpora=("$scratch/new/$target" "corpus/$target")
  fi
  dict=()
  [ -f "dict/$target.dict" ] && dict=("-dict=dict/$target.dict")
  touch "$scratch/start"
  if ! cargo fuzz run -s none "$target" "${corpora[@]}" -- \
    -max_total_time="$seconds" -max_len=8192 -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 "${dict[@]}"; then
    echo "fuzz $target FAILED; its inputs:" >&2
    find "artifacts/$target" -type f -newer "$scratch/start" | while read -r input; do
      echo "fuzz/$input ($(wc -c <"$input") bytes), base64:" >&2
      base64 -w0 "$input" >&2
      echo >&2
    done
    exit 1
  fi
done
