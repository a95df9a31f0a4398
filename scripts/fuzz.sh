#!/usr/bin/env bash
# Run every cargo fuzz target for a while (default 20 s each; `scripts/fuzz.sh 600` for the
# 10-minute local runs), one at a time on one core, over the corpus kept in fuzz/corpus/.
# Needs cargo-fuzz (`cargo install cargo-fuzz`); the stable toolchain is used with
# RUSTC_BOOTSTRAP=1 for the sanitizer-coverage flags. Without sanitizers (`-s none`): Sluice
# forbids unsafe code, and the panics and assertions are what the targets look for.
# New inputs land in fuzz/corpus/<target>; `scripts/fuzz.sh --cmin` minimises it again.
# A crash leaves its input in fuzz/artifacts/<target>/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz missing: cargo install cargo-fuzz --locked" >&2
  exit 1
fi
if [ "${1:-}" = "--cmin" ]; then
  for target in $(cargo fuzz list); do
    cargo fuzz cmin -s none "$target" "corpus/$target"
  done
  exit 0
fi
seconds="${1:-20}"
targets=("${@:2}")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
cargo fuzz build -s none
for target in "${targets[@]}"; do
  echo "== fuzz $target for ${seconds}s"
  mkdir -p "corpus/$target"
  dict=()
  [ -f "dict/$target.dict" ] && dict=("-dict=dict/$target.dict")
  cargo fuzz run -s none "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -max_len=8192 -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 "${dict[@]}"
done
