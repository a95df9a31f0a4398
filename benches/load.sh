#!/usr/bin/env bash
# Decides whether Sluice's proxy path is competitive with nginx configured as ingress-nginx
# configures it: same backend, one worker each, access logs off, wrk against both in turn.
#
# Usage: bash benches/load.sh [--install] [--no-build]
#   --install   apt-get install nginx and wrk when missing (default: print the command, exit)
#   --no-build  use the existing target/release/sluice (or set SLUICE_BIN: never built)
# Environment: ROUNDS (3), DURATION (10s), CONNECTIONS (50), THREADS (1), WARMUP (3s),
#   BASE_PORT (18300: backend, +1 nginx proxy, +2 sluice http, +3 sluice https, +4 admin).
# Everything listens on 127.0.0.1 only; every process started here is stopped on exit.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-1}
WARMUP=${WARMUP:-3s}
BASE_PORT=${BASE_PORT:-18300}
BACKEND_PORT=$BASE_PORT
NGINX_PORT=$((BASE_PORT + 1))
SLUICE_PORT=$((BASE_PORT + 2))
SLUICE_HTTPS_PORT=$((BASE_PORT + 3))
SLUICE_ADMIN_PORT=$((BASE_PORT + 4))

# shellcheck source=benches/lib.sh
. "$(dirname "$0")/lib.sh"
bench_args 11 "$@"
bench_tools nginx wrk curl
bench_sluice_bin
bench_workdir sluice-load
bench_check_ports "$BACKEND_PORT" "$NGINX_PORT" "$SLUICE_PORT" "$SLUICE_HTTPS_PORT" "$SLUICE_ADMIN_PORT"
bench_copy_sluice

# The backend (a fixed small 200 body), nginx rendered as ingress-nginx renders it, and
# Sluice's manifests: the same backend behind a Service and its EndpointSlice, one Ingress
# without host (the catch-all server, like nginx's `_`), the access log off in both.
backend_conf backend "$BACKEND_PORT" > "$WORK/backend.conf"
ingress_nginx_conf name=proxy http="$NGINX_PORT" > "$WORK/proxy.conf"
mkdir -p "$WORK/manifests"
{
    sluice_base_manifests "$BACKEND_PORT"
    sluice_ingress bench
} > "$WORK/manifests/bench.yaml"

start_nginx backend
BACKEND_MASTER=$STARTED
start_nginx proxy
NGINX_MASTER=$STARTED
start_sluice sluice "$WORK/manifests" "$SLUICE_PORT" "$SLUICE_HTTPS_PORT" "$SLUICE_ADMIN_PORT"
SLUICE_PID=$STARTED

wait_200 backend "http://127.0.0.1:$BACKEND_PORT/"
wait_200 "nginx proxy" "http://127.0.0.1:$NGINX_PORT/"
wait_200 sluice "http://127.0.0.1:$SLUICE_PORT/"
# The proxy's pids for CPU accounting: nginx's master and its worker; Sluice's process.
read -r -a BACKEND_PIDS <<< "$(nginx_pids "$BACKEND_MASTER")"
read -r -a NGINX_PIDS <<< "$(nginx_pids "$NGINX_MASTER")"
ALL_SERVER_PIDS=("${BACKEND_PIDS[@]}" "${NGINX_PIDS[@]}" "$SLUICE_PID")
body_nginx=$(curl -s "http://127.0.0.1:$NGINX_PORT/")
body_sluice=$(curl -s "http://127.0.0.1:$SLUICE_PORT/")
[[ $body_nginx == "$body_sluice" ]] || { echo "bodies differ: $body_nginx / $body_sluice" >&2; exit 1; }

# --- measure -----------------------------------------------------------------------------
# One wrk run against a proxy. Sets RPS, P50, P99 (ms), ERRORS, PROXY_CPU (% of one core),
# US_PER_REQ (proxy CPU microseconds per request) and OTHER_CPU (% of one core used by
# processes other than wrk, the backend and the two proxies: other work on the machine).
run_wrk() { # $1 = port, $2 = duration, $3 = output file, $4... = pids of the proxy
    local port=$1 duration=$2 out=$3
    shift 3
    local t0 p0 b0 c0 m0 t1 p1 b1 c1 m1
    t0=$EPOCHREALTIME
    ticks_of "$@"; p0=$TICKS
    ticks_of "${ALL_SERVER_PIDS[@]}"; b0=$TICKS
    children_ticks; c0=$TICKS
    machine_ticks; m0=$TICKS
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$duration" --latency "http://127.0.0.1:$port/" > "$out"
    machine_ticks; m1=$TICKS
    children_ticks; c1=$TICKS
    ticks_of "${ALL_SERVER_PIDS[@]}"; b1=$TICKS
    ticks_of "$@"; p1=$TICKS
    t1=$EPOCHREALTIME
    RPS=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    P50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")
    P99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")
    ERRORS=$(awk '/Socket errors:/ { gsub(/,/, ""); e += $4 + $6 + $8 + $10 }
                  /Non-2xx/ { e += $NF } END { print e + 0 }' "$out")
    local requests
    requests=$(awk '/requests in/ { print $1 }' "$out")
    read -r PROXY_CPU US_PER_REQ OTHER_CPU < <(awk -v hz="$HZ" -v t0="$t0" -v t1="$t1" \
        -v p="$((p1 - p0))" -v b="$((b1 - b0))" -v c="$((c1 - c0))" -v m="$((m1 - m0))" \
        -v n="$requests" 'BEGIN {
            wall = t1 - t0; other = (m - b - c) / hz / wall * 100; if (other < 0) other = 0
            printf "%.0f %.1f %.0f\n", p / hz / wall * 100, p / hz * 1e6 / n, other }')
}

echo
# shellcheck disable=SC2034 # read by lib.sh
MEDIAN_FORMAT=%.2f RATIO_FORMAT=%.3f
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, $ROUNDS rounds; nginx $(nginx -v 2>&1 | sed 's/.*\///'),"
echo "backend 127.0.0.1:$BACKEND_PORT, nginx proxy :$NGINX_PORT, sluice :$SLUICE_PORT; $(nproc) CPUs"
echo "warm-up ($WARMUP each)..."
run_wrk "$NGINX_PORT" "$WARMUP" "$WORK/warmup-nginx.txt" "${NGINX_PIDS[@]}"
run_wrk "$SLUICE_PORT" "$WARMUP" "$WORK/warmup-sluice.txt" "$SLUICE_PID"

printf '\n%-6s %-7s %10s %8s %8s %6s %9s %9s %9s\n' round proxy "req/s" "p50 ms" "p99 ms" \
    errors "proxy CPU" "CPU us/req" "other CPU"
declare -a NGINX_RPS SLUICE_RPS NGINX_P99 SLUICE_P99 NGINX_US SLUICE_US
for round in $(seq "$ROUNDS"); do
    # Alternate which proxy goes first, so neither always runs on a warmer machine.
    if ((round % 2)); then order="nginx sluice"; else order="sluice nginx"; fi
    for proxy in $order; do
        if [[ $proxy == nginx ]]; then
            run_wrk "$NGINX_PORT" "$DURATION" "$WORK/round$round-$proxy.txt" "${NGINX_PIDS[@]}"
        else
            run_wrk "$SLUICE_PORT" "$DURATION" "$WORK/round$round-$proxy.txt" "$SLUICE_PID"
        fi
        printf '%-6s %-7s %10s %8s %8s %6s %8s%% %9s %8s%%\n' "$round" "$proxy" "$RPS" "$P50" "$P99" \
            "$ERRORS" "$PROXY_CPU" "$US_PER_REQ" "$OTHER_CPU"
        if [[ $proxy == nginx ]]; then
            NGINX_RPS+=("$RPS"); NGINX_P99+=("$P99"); NGINX_US+=("$US_PER_REQ")
        else
            SLUICE_RPS+=("$RPS"); SLUICE_P99+=("$P99"); SLUICE_US+=("$US_PER_REQ")
        fi
    done
done

n_rps=$(median "${NGINX_RPS[@]}"); s_rps=$(median "${SLUICE_RPS[@]}")
n_p99=$(median "${NGINX_P99[@]}"); s_p99=$(median "${SLUICE_P99[@]}")
n_us=$(median "${NGINX_US[@]}"); s_us=$(median "${SLUICE_US[@]}")
echo
echo "summary over $ROUNDS rounds (median; mean in brackets):"
for proxy in nginx sluice; do
    if [[ $proxy == nginx ]]; then
        r=$n_rps; rm=$(mean "${NGINX_RPS[@]}"); q=$n_p99; qm=$(mean "${NGINX_P99[@]}"); u=$n_us
    else
        r=$s_rps; rm=$(mean "${SLUICE_RPS[@]}"); q=$s_p99; qm=$(mean "${SLUICE_P99[@]}"); u=$s_us
    fi
    printf '  %-7s %10s req/s (%s)   p99 %6s ms (%s)   %6s CPU us/req\n' "$proxy" "$r" "$rm" "$q" "$qm" "$u"
done
echo "  sluice/nginx: req/s $(ratio "$s_rps" "$n_rps") (higher is better)," \
    "p99 $(ratio "$s_p99" "$n_p99"), CPU per request $(ratio "$s_us" "$n_us") (lower is better)"
echo "  load average before start: $LOAD_BEFORE; now: $(cut -d' ' -f1-3 /proc/loadavg)" \
    "(the run itself adds ~3: wrk, backend, proxy)"
if [[ -s $WORK/sluice.log ]]; then
    echo "sluice stderr (last lines):"
    tail -n 5 "$WORK/sluice.log"
fi
