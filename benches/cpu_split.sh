#!/usr/bin/env bash
# Where a proxy's CPU per request goes: user space against the kernel, for nginx (configured
# as ingress-nginx configures it) and Sluice, and optionally a second Sluice build (BASELINE)
# for a before/after. h2load --h1 keep-alive against each in turn, ROUNDS times; with
# STRACE=1 one more pass under `strace -c` counts system calls per request.
# compare.sh reports CPU per request as one figure; this splits it, which says how far
# user-space work alone can move the ratio (the kernel's share is the same socket work for
# every proxy).
#
# Usage: bash benches/cpu_split.sh [--install] [--no-build]
#   --install   apt-get install nginx, nghttp2-client (h2load), strace when missing
#   --no-build  use the existing target/release/sluice (or set SLUICE_BIN: never built)
# Environment: REQUESTS (200000 per pass), CONNECTIONS (50), ROUNDS (3), BASELINE (a second
#   Sluice binary, optional), STRACE (0), BASE_PORT (18900: backend, +1 nginx, +2 status,
#   +3/+4/+5 Sluice http/https/admin, +6/+7/+8 the baseline's).
set -euo pipefail

REQUESTS=${REQUESTS:-200000}
CONNECTIONS=${CONNECTIONS:-50}
ROUNDS=${ROUNDS:-3}
BASELINE=${BASELINE:-}
STRACE=${STRACE:-0}
BASE_PORT=${BASE_PORT:-18900}
BACKEND_PORT=$BASE_PORT

# shellcheck source=benches/lib.sh
. "$(dirname "$0")/lib.sh"
bench_args 16 "$@"
tools=(nginx h2load:nghttp2-client curl)
((STRACE)) && tools+=(strace)
bench_tools "${tools[@]}"
bench_sluice_bin
bench_workdir sluice-cpu-split
bench_check_ports $(seq "$BASE_PORT" $((BASE_PORT + 8)))
bench_copy_sluice

backend_conf backend "$BACKEND_PORT" > "$WORK/backend.conf"
ingress_nginx_conf name=proxy http=$((BASE_PORT + 1)) status=$((BASE_PORT + 2)) > "$WORK/proxy.conf"
mkdir -p "$WORK/manifests"
sluice_base_manifests "$BACKEND_PORT" > "$WORK/manifests/base.yaml"
sluice_ingress bench > "$WORK/manifests/ingress.yaml"

start_nginx backend
start_nginx proxy
NGINX_MASTER=$STARTED
start_sluice sluice "$WORK/manifests" $((BASE_PORT + 3)) $((BASE_PORT + 4)) $((BASE_PORT + 5))
SLUICE_PID=$STARTED
targets=("nginx:$((BASE_PORT + 1))" "sluice:$((BASE_PORT + 3))")
if [[ -n $BASELINE ]]; then
    cp "$BASELINE" "$WORK/baseline"
    SLUICE=$WORK/baseline start_sluice baseline "$WORK/manifests" $((BASE_PORT + 6)) $((BASE_PORT + 7)) $((BASE_PORT + 8))
    BASELINE_PID=$STARTED
    targets+=("baseline:$((BASE_PORT + 6))")
fi
for target in "${targets[@]}"; do
    wait_200 "${target%%:*}" "http://127.0.0.1:${target#*:}/"
done
# nginx's one worker does the proxying; its master only waits.
read -r -a nginx_procs <<< "$(nginx_pids "$NGINX_MASTER")"
NGINX_WORKER=${nginx_procs[1]}
pid_of() {
    case $1 in nginx) echo "$NGINX_WORKER" ;; sluice) echo "$SLUICE_PID" ;; *) echo "$BASELINE_PID" ;; esac
}

# utime and stime of one process, in clock ticks.
cpu_ticks() { # $1 = pid
    local st
    read -r -a st < "/proc/$1/stat"
    echo "${st[13]} ${st[14]}"
}

echo "$SLUICE_VERSION${BASELINE:+; baseline $BASELINE}; $REQUESTS requests per pass, $CONNECTIONS connections"
printf '%-9s %-6s %10s %12s %12s %12s\n' proxy round req/s "user ms/1k" "sys ms/1k" "total ms/1k"
for round in $(seq "$ROUNDS"); do
    for target in "${targets[@]}"; do
        name=${target%%:*} port=${target#*:} pid=$(pid_of "${target%%:*}")
        h2load --h1 -n 5000 -c "$CONNECTIONS" "http://127.0.0.1:$port/" > /dev/null
        read -r u0 s0 <<< "$(cpu_ticks "$pid")"
        rate=$(h2load --h1 -n "$REQUESTS" -c "$CONNECTIONS" "http://127.0.0.1:$port/" | awk '/^finished in/ { print $4 }')
        read -r u1 s1 <<< "$(cpu_ticks "$pid")"
        awk -v n="$name" -v r="$round" -v rate="$rate" -v u=$((u1 - u0)) -v s=$((s1 - s0)) \
            -v hz="$HZ" -v req="$REQUESTS" 'BEGIN {
                k = 1000 * 1000 / hz / req
                printf "%-9s %-6s %10.0f %12.2f %12.2f %12.2f\n", n, r, rate, u * k, s * k, (u + s) * k }'
    done
done

if ((STRACE)); then
    echo "system calls per request (strace -c, $REQUESTS requests):"
    for target in "${targets[@]}"; do
        name=${target%%:*} port=${target#*:} pid=$(pid_of "${target%%:*}")
        strace -q -c -f -p "$pid" -o "$WORK/$name.strace" &
        tracer=$!
        sleep 1
        h2load --h1 -n "$REQUESTS" -c "$CONNECTIONS" "http://127.0.0.1:$port/" > /dev/null
        kill -INT "$tracer"
        wait "$tracer" 2> /dev/null || true
        awk -v n="$name" -v req="$REQUESTS" '
            $NF == "total" { printf "  %-9s total %.2f:", n, $4 / req }
            NR > 2 && $NF != "total" && $4 ~ /^[0-9]+$/ && $4 / req >= 0.05 { calls = calls sprintf(" %s %.2f", $NF, $4 / req) }
            END { print calls }' "$WORK/$name.strace"
    done
fi
