#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind's callgrind: Sluice (one
# worker thread, access log off) in front of an nginx backend's 19-byte answer, driven by
# h2load --h1 keep-alive. Deterministic to about 1-3 % between runs of the same binary, where
# CPU time on a shared machine moves by tens of percent; the issue 9 PERF notes quote it.
# Counts only user space (valgrind emulates the clock and cannot see the kernel's share).
#
# Usage: bash benches/callgrind.sh [--install] [--no-build]
#   --install   apt-get install valgrind, nginx, nghttp2-client (h2load) when missing
#   --no-build  use the existing target/release/sluice (or set SLUICE_BIN: never built). A
#               `cargo build --profile profiling` binary (no LTO, rebuilt in about a minute)
#               counts ~10 % more than a release build: compare like with like
# Environment: REQUESTS (20000 counted), WARMUP_REQUESTS (2000, not counted), CONNECTIONS
#   (10; 50 is compare.sh's), BASE_PORT (18950: backend, +1/+2/+3 Sluice http/https/admin).
#   KEEP_WORK=1 keeps the callgrind.out file for `callgrind_annotate`.
set -euo pipefail

REQUESTS=${REQUESTS:-20000}
WARMUP_REQUESTS=${WARMUP_REQUESTS:-2000}
CONNECTIONS=${CONNECTIONS:-10}
BASE_PORT=${BASE_PORT:-18950}
BACKEND_PORT=$BASE_PORT

# shellcheck source=benches/lib.sh
. "$(dirname "$0")/lib.sh"
bench_args 15 "$@"
bench_tools valgrind callgrind_control:valgrind nginx h2load:nghttp2-client curl
bench_sluice_bin
bench_workdir sluice-callgrind
bench_check_ports $(seq "$BASE_PORT" $((BASE_PORT + 3)))
bench_copy_sluice

backend_conf backend "$BACKEND_PORT" > "$WORK/backend.conf"
mkdir -p "$WORK/manifests"
sluice_base_manifests "$BACKEND_PORT" > "$WORK/manifests/base.yaml"
sluice_ingress bench > "$WORK/manifests/ingress.yaml"
start_nginx backend

# Instrumentation starts off, so start-up and warm-up are not counted.
cat > "$WORK/under-callgrind" << EOF
#!/bin/sh
exec valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out" --instr-atstart=no "$SLUICE" "\$@"
EOF
chmod +x "$WORK/under-callgrind"
SLUICE=$WORK/under-callgrind start_sluice sluice "$WORK/manifests" $((BASE_PORT + 1)) $((BASE_PORT + 2)) $((BASE_PORT + 3))
VALGRIND_PID=$STARTED
url="http://127.0.0.1:$((BASE_PORT + 1))/"
for _ in $(seq 600); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "$url" || true) == 200 ]] && break
    kill -0 "$VALGRIND_PID" 2> /dev/null || { tail -n 20 "$WORK/sluice.log" >&2; exit 1; }
    sleep 0.1
done

h2load --h1 -n "$WARMUP_REQUESTS" -c "$CONNECTIONS" "$url" > /dev/null
callgrind_control -i on "$VALGRIND_PID" > /dev/null 2>&1
done_line=$(h2load --h1 -n "$REQUESTS" -c "$CONNECTIONS" "$url" | grep '^requests:')
callgrind_control -i off "$VALGRIND_PID" > /dev/null 2>&1
# The dump on request is callgrind.out.1; the one valgrind writes at exit counts nothing more.
callgrind_control -d "$VALGRIND_PID" > /dev/null 2>&1
for _ in $(seq 100); do
    [[ -s $WORK/callgrind.out.1 ]] && break
    sleep 0.1
done
sleep 1
bench_stop "$VALGRIND_PID"

read -r -a counted <<< "$(echo "$done_line" | tr -d ',')"
# "requests: N total, N started, N done, N succeeded, ..."
succeeded=${counted[7]}
((succeeded == REQUESTS)) || { echo "only $succeeded of $REQUESTS requests succeeded: $done_line" >&2; exit 1; }
total=$(awk '/^totals:/ { print $2 }' "$WORK/callgrind.out.1")
echo "$SLUICE_VERSION; $REQUESTS requests over $CONNECTIONS connections (after $WARMUP_REQUESTS)"
echo "user-space instructions: $total, per request: $((total / REQUESTS))"
[[ -n ${KEEP_WORK:-} ]] && echo "callgrind output: $WORK/callgrind.out.1"
exit 0
