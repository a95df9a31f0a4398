#!/usr/bin/env bash
# Sluice's test command: installs what the tests need, then checks formatting and lints, runs
# every unit and integration test, and runs each cargo fuzz target briefly.
# Works on a fresh Debian machine with a Rust toolchain (stable is enough).
# SLUICE_FUZZ_SECONDS: seconds per fuzz target (default 15); 0 skips the fuzz step. The first
# fuzz run installs cargo-fuzz and builds the instrumented targets into fuzz/target (a few
# minutes); later runs reuse both.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests use: curl for humans debugging a failure; prometheus for
# `promtool check metrics` on the scraped /metrics (tests/metrics.rs skips it without);
# pebble and dnsmasq-base for the ACME tests.
need=()
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# pebble (RFC 8555 test CA) and dnsmasq (its resolver: every name to 127.0.0.1) for the ACME
# tests, tests/acme*.rs, which fail without them.
command -v pebble >/dev/null 2>&1 || need+=(pebble)
[ -x /usr/sbin/dnsmasq ] || command -v dnsmasq >/dev/null 2>&1 || need+=(dnsmasq-base)
# make and a C compiler for jemalloc (tikv-jemalloc-sys builds it; the allocator of the binary).
command -v make >/dev/null 2>&1 || need+=(make)
command -v cc >/dev/null 2>&1 || need+=(gcc)
# A C++ compiler for libFuzzer (libfuzzer-sys builds it) when the fuzz step below runs.
fuzz_seconds="${SLUICE_FUZZ_SECONDS:-15}"
[ "$fuzz_seconds" = 0 ] || command -v c++ >/dev/null 2>&1 || need+=(g++)
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"
  else
    echo "missing packages: ${need[*]} (install them with apt-get)" >&2
  fi
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

# A clean clone gains nothing from incremental state, and it is a quarter of target/ on disk.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi
target_dir="${CARGO_TARGET_DIR:-target}"
disk_report() {
  local used="nothing yet"
  [ -d "$target_dir" ] && used=$(du -sh "$target_dir" | cut -f1)
  echo "disk: $target_dir holds $used; $(df -h . | awk 'NR == 2 { print $4 " free on " $6 }')"
}
disk_report

echo "== kubectl kustomize deploy/"
if command -v kubectl >/dev/null 2>&1; then
  kubectl kustomize deploy/ >/dev/null
else
  echo "kubectl not on PATH: skipping the kustomize check of deploy/ (tests/deploy.rs still parses every manifest)" >&2
fi
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --quiet
disk_report
# cargo test above replays the kept corpus (tests/fuzz_corpus.rs); this looks for new inputs.
# They go to a temporary directory, so fuzz/corpus/ stays as committed.
if [ "$fuzz_seconds" != 0 ]; then
  echo "== scripts/fuzz.sh $fuzz_seconds (SLUICE_FUZZ_SECONDS=0 skips)"
  SLUICE_FUZZ_KEEP=0 ./scripts/fuzz.sh "$fuzz_seconds"
fi
