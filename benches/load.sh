#!/usr/bin/env bash
# Decides whether Sluice's proxy path is competitive with nginx configured as ingress-nginx
# configures it: same backend, one worker each, access logs off, wrk against both in turn.
#
# Usage: bash benches/load.sh [--install] [--no-build]
#   --install   apt-get install nginx and wrk when missing (default: print the command, exit)
#   --no-build  use the existing target/release/sluice
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

INSTALL=0
BUILD=1
for arg in "$@"; do
    case $arg in
        --install) INSTALL=1 ;;
        --no-build) BUILD=0 ;;
        -h | --help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# --- tools -------------------------------------------------------------------------------
missing=()
for tool in nginx wrk curl; do
    command -v "$tool" > /dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    cmd="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
    if ((INSTALL)); then
        echo "installing: ${missing[*]}"
        sh -c "$cmd"
    else
        echo "missing: ${missing[*]}. Install with:" >&2
        echo "  $cmd" >&2
        echo "(or rerun with --install)" >&2
        exit 1
    fi
fi

# --- build -------------------------------------------------------------------------------
TARGET_DIR=${CARGO_TARGET_DIR:-target}
SLUICE_BIN=$TARGET_DIR/release/sluice
if ((BUILD)); then
    echo "building sluice (cargo build --release)..."
    cargo build --release --bin sluice
fi
[[ -x $SLUICE_BIN ]] || { echo "no $SLUICE_BIN; build it or drop --no-build" >&2; exit 1; }

# --- processes and cleanup ---------------------------------------------------------------
WORK=$(mktemp -d /tmp/sluice-load.XXXXXX)
chmod 755 "$WORK" # nginx workers run as nobody when started as root
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2> /dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2> /dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2> /dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for port in $BACKEND_PORT $NGINX_PORT $SLUICE_PORT $SLUICE_HTTPS_PORT $SLUICE_ADMIN_PORT; do
    if (echo > /dev/tcp/127.0.0.1/$port) 2> /dev/null; then
        echo "port $port on 127.0.0.1 is already in use; set BASE_PORT" >&2
        exit 1
    fi
done

# Common nginx preamble: not daemonised, everything under $WORK.
nginx_preamble() { # $1 = name
    cat << EOF
worker_processes 1;
daemon off;
pid $WORK/$1.pid;
error_log $WORK/$1.error.log warn;
EOF
}
nginx_temp_paths() { # $1 = name
    mkdir -p "$WORK/$1-tmp"
    cat << EOF
    client_body_temp_path $WORK/$1-tmp/body;
    proxy_temp_path       $WORK/$1-tmp/proxy;
    fastcgi_temp_path     $WORK/$1-tmp/fastcgi;
    uwsgi_temp_path       $WORK/$1-tmp/uwsgi;
    scgi_temp_path        $WORK/$1-tmp/scgi;
EOF
}

# The backend: a fixed small 200 body (peers.md section 3), its own nginx with one worker.
{
    nginx_preamble backend
    cat << EOF
events { worker_connections 4096; }
http {
    access_log off;
    default_type text/plain;
$(nginx_temp_paths backend)
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$BACKEND_PORT;
        location / { return 200 "hello from backend\n"; }
    }
}
EOF
} > "$WORK/backend.conf"

# nginx as ingress-nginx's nginx.tmpl renders it with default ConfigMap values, minus the Lua
# (balancer_by_lua, monitor) that ingress-nginx runs per request: so this baseline is, if
# anything, faster than a real ingress-nginx pod.
{
    nginx_preamble proxy
    cat << EOF
events {
    multi_accept on;
    worker_connections 16384;
    use epoll;
}
http {
    access_log off;
    default_type text/html;
$(nginx_temp_paths proxy)
    server_tokens off;
    keepalive_timeout 75s;
    keepalive_requests 1000;
    client_header_timeout 60s;
    proxy_headers_hash_max_size 512;
    proxy_headers_hash_bucket_size 64;

    map \$http_x_request_id \$req_id {
        default \$http_x_request_id;
        ""      \$request_id;
    }
    # With upstream keepalive, ingress-nginx sends an empty Connection header (not "close").
    map \$http_upgrade \$connection_upgrade {
        default upgrade;
        ''      '';
    }

    upstream upstream_balancer {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 320;
        keepalive_time 1h;
        keepalive_timeout 60s;
        keepalive_requests 10000;
    }

    server {
        server_name _;
        listen 127.0.0.1:$NGINX_PORT default_server reuseport backlog=4096;
        location / {
            proxy_set_header Host              \$http_host;
            proxy_set_header Upgrade           \$http_upgrade;
            proxy_set_header Connection        \$connection_upgrade;
            proxy_set_header X-Request-ID      \$req_id;
            proxy_set_header X-Real-IP         \$remote_addr;
            proxy_set_header X-Forwarded-For   \$remote_addr;
            proxy_set_header X-Forwarded-Host  \$http_host;
            proxy_set_header X-Forwarded-Port  \$server_port;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Scheme \$scheme;
            proxy_set_header X-Scheme          \$scheme;
            proxy_set_header X-Original-URI    \$request_uri;
            proxy_set_header Proxy             "";

            proxy_connect_timeout 5s;
            proxy_send_timeout 60s;
            proxy_read_timeout 60s;
            proxy_buffering off;
            proxy_buffer_size 4k;
            proxy_buffers 4 4k;
            proxy_request_buffering on;
            proxy_http_version 1.1;
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries 3;
            proxy_pass http://upstream_balancer;
        }
    }
}
EOF
} > "$WORK/proxy.conf"

# Sluice's manifests: the same backend behind a Service and its EndpointSlice, one Ingress
# without host (the catch-all server, like nginx's `_`), and the ConfigMap turning the access
# log off.
mkdir -p "$WORK/manifests"
cat > "$WORK/manifests/bench.yaml" << EOF
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: nginx
spec:
  controller: k8s.io/ingress-nginx
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: sluice
  namespace: bench
data:
  disable-access-log: "true"
---
apiVersion: v1
kind: Service
metadata:
  name: backend
  namespace: bench
spec:
  ports:
  - name: http
    port: 80
    targetPort: $BACKEND_PORT
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: backend-local
  namespace: bench
  labels:
    kubernetes.io/service-name: backend
addressType: IPv4
ports:
- name: http
  port: $BACKEND_PORT
endpoints:
- addresses: ["127.0.0.1"]
  conditions:
    ready: true
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: bench
  namespace: bench
spec:
  ingressClassName: nginx
  rules:
  - http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service:
            name: backend
            port:
              name: http
EOF

wait_200() { # $1 = url, $2 = what
    for _ in $(seq 100); do
        if [[ $(curl -s -o /dev/null -w '%{http_code}' "$1") == 200 ]]; then return 0; fi
        sleep 0.1
    done
    echo "$2 did not answer 200 on $1; logs in $WORK:" >&2
    tail -n 20 "$WORK"/*.log >&2 || true
    exit 1
}

nginx -t -q -p "$WORK" -c "$WORK/backend.conf" -e "$WORK/backend.error.log"
nginx -t -q -p "$WORK" -c "$WORK/proxy.conf" -e "$WORK/proxy.error.log"
nginx -p "$WORK" -c "$WORK/backend.conf" -e "$WORK/backend.error.log" &
PIDS+=($!)
nginx -p "$WORK" -c "$WORK/proxy.conf" -e "$WORK/proxy.error.log" &
PIDS+=($!)
RUST_LOG=${RUST_LOG:-warn} "$SLUICE_BIN" \
    --manifests "$WORK/manifests" \
    --configmap bench/sluice \
    --worker-threads 1 \
    --bind-address 127.0.0.1 \
    --http-port "$SLUICE_PORT" \
    --https-port "$SLUICE_HTTPS_PORT" \
    --healthz-host 127.0.0.1 \
    --healthz-port "$SLUICE_ADMIN_PORT" \
    --metrics-port "$SLUICE_ADMIN_PORT" \
    2> "$WORK/sluice.log" &
PIDS+=($!)

wait_200 "http://127.0.0.1:$BACKEND_PORT/" backend
wait_200 "http://127.0.0.1:$NGINX_PORT/" "nginx proxy"
wait_200 "http://127.0.0.1:$SLUICE_PORT/" sluice
# The proxy's pids for CPU accounting: nginx's master and its worker; Sluice's process.
BACKEND_PIDS=("${PIDS[0]}" $(ps -o pid= --ppid "${PIDS[0]}"))
NGINX_PIDS=("${PIDS[1]}" $(ps -o pid= --ppid "${PIDS[1]}"))
SLUICE_PID=${PIDS[2]}
ALL_SERVER_PIDS=("${BACKEND_PIDS[@]}" "${NGINX_PIDS[@]}" "$SLUICE_PID")
body_nginx=$(curl -s "http://127.0.0.1:$NGINX_PORT/")
body_sluice=$(curl -s "http://127.0.0.1:$SLUICE_PORT/")
[[ $body_nginx == "$body_sluice" ]] || { echo "bodies differ: $body_nginx / $body_sluice" >&2; exit 1; }

# --- measure -----------------------------------------------------------------------------
# wrk's latency figures to milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
        printf "%.3f", n }'
}

# CPU accounting, all with shell builtins (no fork between the two readings): clock ticks of
# a set of processes (utime + stime), of this shell's waited-for children (cutime + cstime:
# wrk), and of the whole machine (busy = everything but idle and iowait).
HZ=$(getconf CLK_TCK)
ticks_of() { # pids...
    local pid sum=0 st
    for pid in "$@"; do
        read -r -a st < "/proc/$pid/stat"
        sum=$((sum + st[13] + st[14]))
    done
    TICKS=$sum
}
children_ticks() {
    local st
    read -r -a st < "/proc/$BASHPID/stat"
    TICKS=$((st[15] + st[16]))
}
machine_ticks() {
    local cpu user nice system idle iowait irq softirq steal rest
    read -r cpu user nice system idle iowait irq softirq steal rest < /proc/stat
    TICKS=$((user + nice + system + irq + softirq + steal))
}

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

mean() { printf '%s\n' "$@" | awk '{ s += $1 } END { printf "%.2f", s / NR }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END {
    printf "%.2f", (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }

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
