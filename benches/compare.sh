#!/usr/bin/env bash
# Issue 9's side-by-side benchmark: is Sluice faster than nginx configured as ingress-nginx
# configures it, on the same machine in the same run? One backend (its own nginx), nginx and
# Sluice (one worker process / one worker thread, access logs off), driven in alternation for
# each scenario, ROUNDS times, medians reported; then the issue's targets with PASS/FAIL.
#
# Usage: bash benches/compare.sh [--install] [--no-build]
#   --install   apt-get install nginx, wrk, nghttp2-client, curl, openssl when missing, and
#               cargo install oha into /work/tools/oha (~8 min; for rate-half)
#   --no-build  use the existing target/release/sluice (or set SLUICE_BIN: never built)
# Environment: SCENARIOS (all: h1-small,h1-64k,tls-new-conn,h2-mux,h1-5000-ingresses,
#   gzip-json,idle-10k,idle-tls,rate-half), ROUNDS (3), DURATION (10s), WARMUP (2s), CONNECTIONS (50),
#   THREADS (1: wrk threads), H2_CLIENTS (10), H2_STREAMS (10), H2_PER_CONN (1000), TLS_BATCH
#   (100: connections per h2load invocation in tls-new-conn), TLS_THREADS (2: h2load threads in
#   tls-new-conn; with 1 the client's handshakes set the rate), TLS_KEY (ecdsa: P-256; or rsa:
#   2048), HOSTS (5000), IDLE (10000), RATE (rate-half's rate; default half of nginx's h1-small
#   req/s), SLUICE_BIN, OHA (oha binary; default /work/tools/oha/bin/oha, else oha on PATH),
#   BASE_PORT (18700: backend, +1 nginx http, +2 nginx https, +3 nginx status, +4 sluice http,
#   +5 sluice https, +6 sluice admin).
# Everything listens on 127.0.0.1 only; every process started here is stopped on exit.
set -euo pipefail

ALL_SCENARIOS=h1-small,h1-64k,tls-new-conn,h2-mux,h1-5000-ingresses,gzip-json,idle-10k,idle-tls,rate-half
SCENARIOS=${SCENARIOS:-$ALL_SCENARIOS}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-1}
H2_CLIENTS=${H2_CLIENTS:-10}
H2_STREAMS=${H2_STREAMS:-10}
TLS_BATCH=${TLS_BATCH:-100}
TLS_THREADS=${TLS_THREADS:-2}
H2_PER_CONN=${H2_PER_CONN:-1000}
TLS_KEY=${TLS_KEY:-ecdsa}
HOSTS=${HOSTS:-5000}
IDLE=${IDLE:-10000}
RATE=${RATE:-}
BASE_PORT=${BASE_PORT:-18700}
BACKEND_PORT=$BASE_PORT
NGINX_HTTP=$((BASE_PORT + 1))
NGINX_HTTPS=$((BASE_PORT + 2))
NGINX_STATUS=$((BASE_PORT + 3))
SLUICE_HTTP=$((BASE_PORT + 4))
SLUICE_HTTPS=$((BASE_PORT + 5))
SLUICE_ADMIN=$((BASE_PORT + 6))
HOST=bench.local

# shellcheck source=benches/lib.sh
. "$(dirname "$0")/lib.sh"
bench_args 18 "$@"

IFS=, read -r -a SCEN <<< "$SCENARIOS"
for s in "${SCEN[@]}"; do
    [[ ,$ALL_SCENARIOS, == *,$s,* ]] || { echo "unknown scenario $s (known: $ALL_SCENARIOS)" >&2; exit 2; }
done
want() { [[ ,$SCENARIOS, == *,$1,* ]]; }
[[ $TLS_KEY == ecdsa || $TLS_KEY == rsa ]] || { echo "TLS_KEY is ecdsa or rsa" >&2; exit 2; }

seconds() { # wrk-style duration (10s, 1m, 10) to whole seconds
    case $1 in
        *m) echo $((${1%m} * 60)) ;;
        *s) echo "${1%s}" ;;
        *) echo "$1" ;;
    esac
}
WARMUP_S=$(seconds "$WARMUP")

# --- tools -------------------------------------------------------------------------------
bench_tools nginx:nginx wrk:wrk h2load:nghttp2-client curl:curl openssl:openssl python3:python3 ss:iproute2
OHA=${OHA:-}
if want rate-half && [[ -z $OHA ]]; then
    if [[ -x /work/tools/oha/bin/oha ]]; then
        OHA=/work/tools/oha/bin/oha
    elif command -v oha > /dev/null; then
        OHA=$(command -v oha)
    elif ((INSTALL)); then
        echo "installing oha (cargo install --locked oha, ~8 min)..."
        CARGO_TARGET_DIR=${OHA_TARGET_DIR:-/work/target-oha} \
            cargo install --locked oha --root /work/tools/oha
        OHA=/work/tools/oha/bin/oha
    else
        echo "rate-half needs oha: rerun with --install (cargo install --locked oha --root" \
            "/work/tools/oha), set OHA, or leave rate-half out of SCENARIOS" >&2
        exit 1
    fi
fi
if [[ -n $OHA ]]; then
    if "$OHA" --help | grep -q -- '--output-format'; then OHA_JSON=(--output-format json); else OHA_JSON=(-j); fi
fi
bench_sluice_bin

# 10 000 idle clients: this shell's children (the client, nginx, Sluice) need the descriptors.
ulimit -n "$(ulimit -Hn)" 2> /dev/null || true
if { want idle-10k || want idle-tls; } && (($(ulimit -n) < IDLE + 1000)); then
    echo "ulimit -n is $(ulimit -n): too low for IDLE=$IDLE idle connections" >&2
    exit 1
fi
RLIMIT=$((IDLE + 8192))

bench_workdir sluice-compare
bench_check_ports $(seq "$BASE_PORT" $((BASE_PORT + 6)))
bench_copy_sluice

# --- content, certificate, backend -------------------------------------------------------
# The backend serves / (19 bytes), /64k.bin (65 536 random bytes) and /data.json (~16 KiB of
# JSON, a list of product records), and its own stub_status for the upstream reuse count.
mkdir -p "$WORK/www"
head -c 65536 /dev/urandom > "$WORK/www/64k.bin"
awk 'BEGIN {
    printf "["
    for (i = 1; n < 16300; i++) {
        s = sprintf("%s{\"id\":%d,\"sku\":\"SKU-%06d\",\"name\":\"Product number %d\",\"price\":%d.%02d,\"in_stock\":%s,\"tags\":[\"bench\",\"json\",\"item-%d\"]}",
            (i > 1 ? "," : ""), i, i * 7919 % 1000000, i, (i * 37) % 500, i % 100, (i % 3 ? "true" : "false"), i % 17)
        printf "%s", s; n += length(s)
    }
    print "]" }' > "$WORK/www/data.json"
chmod -R a+rX "$WORK/www"
backend_conf backend "$BACKEND_PORT" + > "$WORK/backend.conf" << EOF
        location = /64k.bin { root $WORK/www; default_type application/octet-stream; }
        location = /data.json { root $WORK/www; default_type application/json; }
        location = /backend_status { stub_status on; }
EOF

# One certificate for both proxies: self-signed for bench.local, key as PKCS#8.
if [[ $TLS_KEY == ecdsa ]]; then
    KEYGEN=(-newkey ec -pkeyopt ec_paramgen_curve:P-256)
    KEY_DESC="ECDSA P-256"
else
    KEYGEN=(-newkey rsa:2048)
    KEY_DESC="RSA 2048"
fi
openssl req -x509 "${KEYGEN[@]}" -nodes -days 30 -subj "/CN=$HOST" \
    -addext "subjectAltName=DNS:$HOST" -keyout "$WORK/tls.key" -out "$WORK/tls.pem" 2> /dev/null
chmod 644 "$WORK/tls.key"

start_nginx backend
BACKEND_MASTER=$STARTED
wait_200 backend "http://127.0.0.1:$BACKEND_PORT/"
read -r -a BACKEND_PIDS <<< "$(nginx_pids "$BACKEND_MASTER")"

# --- the proxies, per profile ------------------------------------------------------------
# Each scenario gets freshly started proxies, so that peak RSS (VmHWM) is that scenario's.
# Profiles: plain (one catch-all Ingress), tls (plus bench.local with a TLS Secret), hosts
# (plus HOSTS Ingresses h1..hN.bench.local), gzip (ConfigMap use-gzip, gzip-level 6).
profile_of() {
    case $1 in
        tls-new-conn | h2-mux | idle-tls) echo tls ;;
        h1-5000-ingresses) echo hosts ;;
        gzip-json) echo gzip ;;
        *) echo plain ;;
    esac
}

start_proxies() { # $1 = profile
    local profile=$1 nginx_opts configmap=() t0
    nginx_opts=(name=proxy http="$NGINX_HTTP" status="$NGINX_STATUS" rlimit="$RLIMIT")
    rm -rf "$WORK/manifests" "$WORK/state-sluice"
    mkdir -p "$WORK/manifests"
    case $profile in
        tls) nginx_opts+=(https="$NGINX_HTTPS" cert="$WORK/tls.pem" key="$WORK/tls.key" host="$HOST") ;;
        hosts) nginx_opts+=(hosts="$HOSTS") ;;
        gzip)
            nginx_opts+=(gzip=6)
            configmap=('use-gzip: "true"' 'gzip-level: "6"')
            ;;
    esac
    ingress_nginx_conf "${nginx_opts[@]}" > "$WORK/proxy.conf"
    {
        sluice_base_manifests "$BACKEND_PORT" "${configmap[@]}"
        sluice_ingress bench
        if [[ $profile == tls ]]; then
            sluice_tls_secret bench-tls "$WORK/tls.pem" "$WORK/tls.key"
            sluice_ingress bench-tls "$HOST" bench-tls
        fi
        if [[ $profile == hosts ]]; then sluice_host_ingresses "$HOSTS"; fi
    } > "$WORK/manifests/bench.yaml"

    t0=$EPOCHREALTIME
    start_nginx proxy
    NGINX_MASTER=$STARTED
    wait_200 "nginx proxy" "http://127.0.0.1:$NGINX_HTTP/"
    NGINX_START=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
    t0=$EPOCHREALTIME
    start_sluice sluice "$WORK/manifests" "$SLUICE_HTTP" "$SLUICE_HTTPS" "$SLUICE_ADMIN"
    SLUICE_PID=$STARTED
    wait_200 sluice "http://127.0.0.1:$SLUICE_HTTP/"
    if [[ $profile == hosts ]]; then
        # Ready when the last Ingress routes.
        wait_200 "sluice h$HOSTS" -H "Host: h$HOSTS.bench.local" "http://127.0.0.1:$SLUICE_HTTP/"
        wait_200 "nginx h$HOSTS" -H "Host: h$HOSTS.bench.local" "http://127.0.0.1:$NGINX_HTTP/"
    fi
    if [[ $profile == tls ]]; then
        wait_200 "sluice https" -k --resolve "$HOST:$SLUICE_HTTPS:127.0.0.1" "https://$HOST:$SLUICE_HTTPS/"
        wait_200 "nginx https" -k --resolve "$HOST:$NGINX_HTTPS:127.0.0.1" "https://$HOST:$NGINX_HTTPS/"
    fi
    SLUICE_START=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
    read -r -a NGINX_PIDS <<< "$(nginx_pids "$NGINX_MASTER")"
    ALL_SERVER_PIDS=("${BACKEND_PIDS[@]}" "${NGINX_PIDS[@]}" "$SLUICE_PID")
}

stop_proxies() {
    bench_stop_forget "$NGINX_MASTER" "$SLUICE_PID"
}

port_of() { # $1 = proxy, [$2 = https]
    if [[ $1 == nginx ]]; then
        if [[ -n ${2:-} ]]; then echo "$NGINX_HTTPS"; else echo "$NGINX_HTTP"; fi
    else
        if [[ -n ${2:-} ]]; then echo "$SLUICE_HTTPS"; else echo "$SLUICE_HTTP"; fi
    fi
}
pids_of() { # $1 = proxy
    if [[ $1 == nginx ]]; then echo "${NGINX_PIDS[*]}"; else echo "$SLUICE_PID"; fi
}

# --- checks before timing ----------------------------------------------------------------
fail() { echo "check failed: $*" >&2; exit 1; }

check_scenario() { # $1 = scenario
    local p port got want head
    for p in nginx sluice; do
        port=$(port_of "$p")
        case $1 in
            h1-small | rate-half | idle-10k | idle-tls)
                got=$(curl -s "http://127.0.0.1:$port/")
                [[ $got == "hello from backend" ]] || fail "$p / answered '$got'"
                ;;
            h1-64k)
                got=$(curl -s "http://127.0.0.1:$port/64k.bin" | sha256sum | cut -d' ' -f1)
                want=$(sha256sum < "$WORK/www/64k.bin" | cut -d' ' -f1)
                [[ $got == "$want" ]] || fail "$p /64k.bin body differs from the backend's file"
                ;;
            h1-5000-ingresses)
                for h in 1 $((HOSTS / 2)) "$HOSTS"; do
                    got=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: h$h.bench.local" "http://127.0.0.1:$port/")
                    [[ $got == 200 ]] || fail "$p Host h$h.bench.local: $got"
                done
                ;;
            gzip-json)
                head=$(curl -s -o "$WORK/gz-$p" -D - -H 'Accept-Encoding: gzip' "http://127.0.0.1:$port/data.json")
                grep -qi '^content-encoding: *gzip' <<< "$head" || fail "$p did not gzip /data.json: $head"
                gunzip -c < "$WORK/gz-$p" | cmp -s - "$WORK/www/data.json" || fail "$p gzip body does not inflate to data.json"
                printf '  gzip-json check: %-6s Content-Encoding: gzip, %s -> %s bytes\n' "$p" \
                    "$(stat -c %s "$WORK/www/data.json")" "$(stat -c %s "$WORK/gz-$p")"
                ;;
            tls-new-conn | h2-mux)
                port=$(port_of "$p" https)
                got=$(openssl s_client -connect "127.0.0.1:$port" -servername "$HOST" < /dev/null 2> /dev/null |
                    openssl x509 -noout -fingerprint -sha256 || true)
                want=$(openssl x509 -noout -fingerprint -sha256 < "$WORK/tls.pem")
                [[ $got == "$want" ]] || fail "$p :$port does not serve $WORK/tls.pem for SNI $HOST"
                got=$(curl -sk --http2 -o /dev/null -w '%{http_version} %{http_code}' \
                    --resolve "$HOST:$port:127.0.0.1" "https://$HOST:$port/")
                [[ $got == "2 200" ]] || fail "$p https: HTTP version and status '$got' (want 2 200)"
                ;;
        esac
    done
}

# --- counters ----------------------------------------------------------------------------
# Backend's stub_status: accepted connections and requests (each reading itself adds one of
# each, subtracted by the caller).
backend_counts() {
    curl -s "http://127.0.0.1:$BACKEND_PORT/backend_status" | awk 'NR == 3 { print $1, $3 }'
}
# Sluice's upstream pool counters: reuses and connections created.
sluice_pool() {
    curl -s "http://127.0.0.1:$SLUICE_ADMIN/metrics" | awk '
        /^sluice_upstream_connection_reuses_total / { r = $2 }
        /^sluice_upstream_connections_created_total / { c = $2 }
        END { printf "%d %d\n", r, c }'
}
# Client connections accepted by a proxy: nginx's stub_status, Sluice's ingress-nginx metric.
accepted() { # $1 = proxy
    if [[ $1 == nginx ]]; then
        curl -s "http://127.0.0.1:$NGINX_STATUS/nginx_status" | awk 'NR == 3 { print $1 }'
    else
        curl -s "http://127.0.0.1:$SLUICE_ADMIN/metrics" | awk -F' ' '
            /^nginx_ingress_controller_nginx_process_connections_total/ && /state="accepted"/ { print $2 }'
    fi
}

# --- one measured run --------------------------------------------------------------------
# measure_begin/measure_end bracket a run of the load tool; with shell builtins only between
# the readings. measure_end sets CPU1K (proxy CPU seconds per 1000 requests) and OTHER (CPU
# used by anything but the load tool, the backend and the proxies, % of one core).
measure_begin() { # pids of the proxy under test...
    T0=$EPOCHREALTIME
    ticks_of "$@"; P0=$TICKS
    ticks_of "${ALL_SERVER_PIDS[@]}"; B0=$TICKS
    children_ticks; C0=$TICKS
    machine_ticks; M0=$TICKS
}
measure_end() { # $1 = requests, $2... = pids of the proxy under test
    local n=$1 p1 b1 c1 m1 t1
    shift
    machine_ticks; m1=$TICKS
    children_ticks; c1=$TICKS
    ticks_of "${ALL_SERVER_PIDS[@]}"; b1=$TICKS
    ticks_of "$@"; p1=$TICKS
    t1=$EPOCHREALTIME
    WALL=$(awk -v a="$T0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    read -r CPU1K OTHER < <(awk -v hz="$HZ" -v wall="$WALL" -v p="$((p1 - P0))" \
        -v b="$((b1 - B0))" -v c="$((c1 - C0))" -v m="$((m1 - M0))" -v n="$n" 'BEGIN {
            other = (m - b - c) / hz / wall * 100; if (other < 0) other = 0
            printf "%.4f %.0f\n", (n ? p / hz / n * 1000 : 0), other }')
}

# Percentiles (ms) of h2load --log-file files (third column: microseconds).
log_percentiles() { # files...
    cut -f3 "$@" | sort -n | awk '{ a[NR] = $1 } END {
        if (!NR) { print "0 0 0"; exit }
        split("50 99 99.9", p, " ")
        for (i = 1; i <= 3; i++) { k = p[i] / 100 * NR; k = (k == int(k)) ? k : int(k) + 1; if (k < 1) k = 1
            printf "%.3f%s", a[k] / 1000, (i < 3 ? " " : "\n") } }'
}

# The wrk Lua script: optionally a random Host among h1..hN.bench.local per request; at the
# end, counts and percentiles in microseconds on one line.
cat > "$WORK/wrk.lua" << 'EOF'
local hosts = tonumber(os.getenv("WRK_HOSTS") or "0")
if hosts > 0 then
    init = function() math.randomseed(os.time() + math.floor(os.clock() * 1e6)) end
    request = function()
        wrk.headers["Host"] = "h" .. math.random(hosts) .. ".bench.local"
        return wrk.format(nil, nil)
    end
end
done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format("RESULT %d %d %d %d %d %d %d %d %d %d\n", summary.requests,
        summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
        latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
EOF

# Each run_* sets RPS, P50, P99, P999 (ms), ERRORS, REQS, CPU1K, OTHER and NOTE.
run_wrk() { # $1 = proxy, $2 = duration, $3 = out, $4 = path, [$5 = hosts]; extra wrk args in WRK_EXTRA
    local proxy=$1 duration=$2 out=$3 path=$4 hosts=${5:-0} port pids r
    port=$(port_of "$proxy")
    read -r -a pids <<< "$(pids_of "$proxy")"
    measure_begin "${pids[@]}"
    WRK_HOSTS=$hosts wrk -t"$THREADS" -c"$CONNECTIONS" -d"$duration" -s "$WORK/wrk.lua" \
        "${WRK_EXTRA[@]}" "http://127.0.0.1:$port$path" > "$out" 2>&1 || true
    read -r -a r <<< "$(awk '$1 == "RESULT"' "$out")"
    ((${#r[@]} == 11)) || { echo "wrk against $proxy failed:" >&2; cat "$out" >&2; exit 1; }
    REQS=${r[1]}
    measure_end "$REQS" "${pids[@]}"
    RPS=$(awk -v n="$REQS" -v d="${r[2]}" 'BEGIN { printf "%.0f", n / d * 1e6 }')
    ERRORS=$((r[3] + r[4] + r[5] + r[6] + r[7]))
    P50=$(awk -v v="${r[8]}" 'BEGIN { printf "%.3f", v / 1000 }')
    P99=$(awk -v v="${r[9]}" 'BEGIN { printf "%.3f", v / 1000 }')
    P999=$(awk -v v="${r[10]}" 'BEGIN { printf "%.3f", v / 1000 }')
    NOTE=""
}

# h2load output: sets REQS (2xx) and ERRORS (failed + non-2xx) summed over files.
h2load_counts() { # files...
    read -r REQS ERRORS < <(cat "$@" | awk '
        /^requests:/ { fail += $10 }
        /^status codes:/ { ok += $3; bad += $5 + $7 + $9 }
        END { print ok + 0, fail + bad + 0 }')
}

# h2load invocations, each with the given arguments, one after the other until $2 seconds
# have passed; outputs $3.N.txt and per-request logs $3.N.log. Sets REQS, ERRORS, RPS, P50,
# P99, P999 and CPU1K, OTHER, WALL.
h2load_loop() { # $1 = proxy, $2 = seconds, $3 = out prefix, $4 = threads, $5... = h2load arguments
    local proxy=$1 seconds=$2 out=$3 threads=$4 port pids end i=0
    shift 4
    port=$(port_of "$proxy" https)
    read -r -a pids <<< "$(pids_of "$proxy")"
    rm -f "$out".*.txt "$out".*.log
    measure_begin "${pids[@]}"
    end=$((${T0%.*} + seconds))
    while :; do
        i=$((i + 1))
        # The URI's host gives SNI and Host: bench.local; --connect-to gives the address.
        h2load -t "$threads" "$@" --connect-to="127.0.0.1:$port" --log-file="$out.$i.log" \
            "https://$HOST:$port/" > "$out.$i.txt" 2>&1 || true
        ((${EPOCHREALTIME%.*} < end)) || break
    done
    h2load_counts "$out".*.txt
    measure_end "$REQS" "${pids[@]}"
    ((REQS)) || { echo "h2load against $proxy failed:" >&2; cat "$out.1.txt" >&2; exit 1; }
    RPS=$(awk -v n="$REQS" -v w="$WALL" 'BEGIN { printf "%.0f", n / w }')
    read -r P50 P99 P999 <<< "$(log_percentiles "$out".*.log)"
}

# A new TLS connection per request: h2load --h1 with as many clients as requests (-n = -c), so
# each request has its own client, hence its own connection and SSL object, and h2load keeps
# no session to resume: a full handshake each. Invocations of TLS_BATCH until the duration
# is over. Checked: the proxy's accepted-connection count grows by the number of requests.
# TLS_THREADS h2load threads: one thread was busy 0.90 s per wall second against either proxy,
# so the client's own handshakes set the rate (benches/README.md).
run_newconn() { # $1 = proxy, $2 = seconds, $3 = out prefix
    local proxy=$1 a0 a1 own=0 proto
    a0=$(accepted "$proxy")
    h2load_loop "$proxy" "$2" "$3" "$TLS_THREADS" --h1 -n "$TLS_BATCH" -c "$TLS_BATCH"
    a1=$(accepted "$proxy")
    # nginx's stub_status counts the connection reading it.
    [[ $proxy == nginx ]] && own=1
    proto=$(awk '/^TLS Protocol:/ { print $3 }' "$3".*.txt | sort -u | paste -sd, -)
    NOTE="conns/req $(awk -v c="$((a1 - a0 - own))" -v n="$((REQS + ERRORS))" \
        'BEGIN { printf "%.3f", n ? c / n : 0 }') $proto"
}

# HTTP/2 over TLS, H2_CLIENTS connections with H2_STREAMS concurrent streams each, each
# connection making H2_PER_CONN requests (1000: ingress-nginx's keep-alive-requests, after
# which both proxies close an HTTP/2 connection; h2load does not reconnect, so invocations are
# repeated until the duration is over).
run_h2mux() { # $1 = proxy, $2 = seconds, $3 = out prefix
    h2load_loop "$1" "$2" "$3" 1 -c "$H2_CLIENTS" -m "$H2_STREAMS" -n "$((H2_CLIENTS * H2_PER_CONN))"
    NOTE="$(awk '/^Application protocol:/ { print $3 }' "$3".1.txt) $(awk '/^TLS Protocol:/ { print $3 }' "$3".1.txt)"
}

# Constant rate without coordinated omission: oha -q RATE --latency-correction (latency counted
# from when each request was due, not when it was sent), keep-alive on (oha's default).
run_oha() { # $1 = proxy, $2 = seconds, $3 = out, $4 = rate
    local proxy=$1 seconds=$2 out=$3 rate=$4 port pids r
    port=$(port_of "$proxy")
    read -r -a pids <<< "$(pids_of "$proxy")"
    measure_begin "${pids[@]}"
    "$OHA" --no-tui "${OHA_JSON[@]}" -z "${seconds}s" -c "$CONNECTIONS" -q "$rate" \
        --latency-correction "http://127.0.0.1:$port/" > "$out" 2> "$out.err" || true
    read -r -a r <<< "$(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
codes = {int(k): v for k, v in d.get("statusCodeDistribution", {}).items()}
ok = sum(v for k, v in codes.items() if 200 <= k < 300)
# Requests still in flight when -z ran out are reported as "aborted due to deadline": not errors.
errs = {k: v for k, v in d.get("errorDistribution", {}).items() if "deadline" not in k}
bad = sum(codes.values()) - ok + sum(errs.values())
p = d["latencyPercentiles"]
ms = lambda v: "%.3f" % ((v or 0) * 1000)
print(ok, bad, "%.0f" % d["summary"]["requestsPerSec"], ms(p["p50"]), ms(p["p99"]), ms(p["p99.9"]))
' "$out" 2>> "$out.err" || true)"
    ((${#r[@]} == 6)) || { echo "oha against $proxy failed:" >&2; cat "$out" "$out.err" >&2; exit 1; }
    REQS=${r[0]}
    measure_end "$REQS" "${pids[@]}"
    ERRORS=${r[1]}; RPS=${r[2]}; P50=${r[3]}; P99=${r[4]}; P999=${r[5]}
    NOTE="at $rate req/s"
}

# IDLE keep-alive connections, one request each, then idle: RSS before, with them open, peak.
run_idle() { # $1 = proxy, $2 = out, [$3 = tls]
    local proxy=$1 out=$2 port pids before est line="" tls=()
    if [[ -n ${3:-} ]]; then
        port=$(port_of "$proxy" https)
        # idle_conns.py's TLS name follows its parallelism: its default (200), as idle-10k.
        tls=(200 "$HOST")
    else
        port=$(port_of "$proxy")
    fi
    read -r -a pids <<< "$(pids_of "$proxy")"
    before=$(mem_kib VmRSS "${pids[@]}")
    measure_begin "${pids[@]}"
    python3 benches/idle_conns.py 127.0.0.1 "$port" "$IDLE" 60 "${tls[@]}" > "$out" 2> "$out.err" &
    local client=$!
    PIDS+=("$client")
    for _ in $(seq 1200); do
        line=$(head -n1 "$out")
        [[ -n $line ]] && break
        kill -0 "$client" 2> /dev/null || break
        sleep 0.1
    done
    [[ $line == ready* ]] || { echo "idle client against $proxy failed:" >&2; cat "$out" "$out.err" >&2; exit 1; }
    sleep 2
    est=$(ss -Htn state established "( sport = :$port )" | wc -l)
    RSS_NOW=$(mem_kib VmRSS "${pids[@]}")
    read -r _ REQS ERRORS <<< "$line"
    kill -TERM "$client" 2> /dev/null || true
    wait "$client" 2> /dev/null || true
    bench_stop_forget "$client"
    measure_end "$REQS" "${pids[@]}"
    RPS=-; P50=-; P99=-; P999=-
    NOTE="RSS before $((before / 1024)) MiB, with $est idle conns $((RSS_NOW / 1024)) MiB"
}

run_scenario_once() { # $1 = scenario, $2 = proxy, $3 = duration, $4 = out
    local d_s
    d_s=$(seconds "$3")
    WRK_EXTRA=()
    case $1 in
        h1-small) run_wrk "$2" "$3" "$4" / ;;
        h1-64k) run_wrk "$2" "$3" "$4" /64k.bin ;;
        h1-5000-ingresses) run_wrk "$2" "$3" "$4" / "$HOSTS" ;;
        gzip-json)
            WRK_EXTRA=(-H 'Accept-Encoding: gzip')
            run_wrk "$2" "$3" "$4" /data.json
            ;;
        tls-new-conn) run_newconn "$2" "$d_s" "$4" ;;
        h2-mux) run_h2mux "$2" "$d_s" "$4" ;;
        rate-half) run_oha "$2" "$d_s" "$4" "$RATE_HALF" ;;
        idle-10k) run_idle "$2" "$4" ;;
        idle-tls) run_idle "$2" "$4" tls ;;
    esac
}

# --- results -----------------------------------------------------------------------------
declare -A RES # [scenario,proxy,metric] = space-separated samples, or one value
add() { RES[$1,$2,$3]+="$4 "; }
med() { # scenario proxy metric
    local v=${RES[$1,$2,$3]:-}
    # shellcheck disable=SC2086 # the samples are space-separated
    if [[ -z ${v// /} || $v == *-* ]]; then echo -; else median $v; fi
}
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
rat() { if [[ $1 == - || $2 == - ]]; then echo -; else ratio "$1" "$2"; fi; }

row() { printf '%-20s %-6s %9s %8s %8s %9s %7s %9s %9s %6s  %s\n' "$@"; }
print_header() {
    row scenario proxy "req/s" "p50 ms" "p99 ms" "p99.9 ms" errors "CPU s/1k" \
        "peak RSS" "other" "notes"
    row "" "" "" "" "" "" "" "" "MiB" "CPU%" ""
}

# --- run ---------------------------------------------------------------------------------
# shellcheck disable=SC2034 # read by lib.sh
MEDIAN_FORMAT=%.6g RATIO_FORMAT=%.2f
echo "Sluice vs nginx as ingress-nginx renders it; one worker process / one worker thread each,"
echo "access logs off in both; medians of $ROUNDS alternating rounds of $DURATION (warm-up $WARMUP)."
echo "nginx $(nginx -v 2>&1 | sed 's/.*\///'), $(openssl version | cut -d' ' -f1-2), sluice $SLUICE_VERSION"
echo "wrk -t$THREADS -c$CONNECTIONS; h2load -c$H2_CLIENTS -m$H2_STREAMS; tls-new-conn h2load -t$TLS_THREADS; TLS: $KEY_DESC certificate;" \
    "$(nproc) CPUs; load average $LOAD_BEFORE"
echo "scenarios: $SCENARIOS"

RATE_HALF=""
for s in "${SCEN[@]}"; do
    profile=$(profile_of "$s")
    echo
    echo "== $s (profile $profile)"
    start_proxies "$profile"
    echo "  started: nginx ${NGINX_START}s, sluice ${SLUICE_START}s; RSS after start: nginx" \
        "$(mib "$(mem_kib VmRSS "${NGINX_PIDS[@]}")") MiB, sluice $(mib "$(mem_kib VmRSS "$SLUICE_PID")") MiB"
    check_scenario "$s"
    if [[ $s == rate-half ]]; then
        if [[ -n $RATE ]]; then
            RATE_HALF=$RATE
        elif [[ -n ${RES[h1-small,nginx,rps]:-} ]]; then
            RATE_HALF=$(awk -v r="$(med h1-small nginx rps)" 'BEGIN { printf "%d", r / 2 }')
        else
            echo "  measuring nginx's h1-small maximum for the rate ($DURATION)..."
            run_wrk nginx "$DURATION" "$WORK/rate-max" /
            RATE_HALF=$(awk -v r="$RPS" 'BEGIN { printf "%d", r / 2 }')
        fi
        echo "  rate: $RATE_HALF req/s (half of nginx's h1-small maximum unless RATE is set)"
    fi
    if [[ $s != idle-* ]] && ((WARMUP_S > 0)); then
        for p in nginx sluice; do run_scenario_once "$s" "$p" "$WARMUP" "$WORK/$s-warmup-$p"; done
    fi
    print_header
    u0=$(sluice_pool)
    declare -A BK=()
    for round in $(seq "$ROUNDS"); do
        if ((round % 2)); then order="nginx sluice"; else order="sluice nginx"; fi
        if [[ $s == idle-* ]] && ((round > 1)); then
            stop_proxies
            start_proxies "$profile"
        fi
        for p in $order; do
            k0=$(backend_counts)
            run_scenario_once "$s" "$p" "$DURATION" "$WORK/$s-r$round-$p"
            k1=$(backend_counts)
            # Backend side: requests per new upstream connection over this run (minus the two
            # status reads), for either proxy.
            read -r ka0 kr0 <<< "$k0"; read -r ka1 kr1 <<< "$k1"
            BK[$p,a]=$((${BK[$p,a]:-0} + ka1 - ka0 - 1)); BK[$p,r]=$((${BK[$p,r]:-0} + kr1 - kr0 - 1))
            # shellcheck disable=SC2046 # pids_of gives a list
            hwm=$(mem_kib VmHWM $(pids_of "$p"))
            add "$s" "$p" rps "$RPS"; add "$s" "$p" p50 "$P50"; add "$s" "$p" p99 "$P99"
            add "$s" "$p" p999 "$P999"; add "$s" "$p" err "$ERRORS"; add "$s" "$p" cpu "$CPU1K"
            add "$s" "$p" hwm "$hwm"
            row "$s r$round" "$p" "$RPS" "$P50" "$P99" "$P999" "$ERRORS" "$CPU1K" \
                "$(mib "$hwm")" "$OTHER" "$NOTE"
        done
    done
    u1=$(sluice_pool)
    read -r ur0 uc0 <<< "$u0"; read -r ur1 uc1 <<< "$u1"
    if [[ $s != idle-* ]]; then
        # Sluice's own pool counters over all rounds (idle-* restart Sluice: not counted).
        RES[$s,sluice,reuse]=$(awk -v r="$((ur1 - ur0))" -v c="$((uc1 - uc0))" \
            'BEGIN { if (r + c) printf "%.3f", r / (r + c) * 100; else print "-" }')
    fi
    for p in nginx sluice; do
        RES[$s,$p,bkreuse]=$(awk -v a="${BK[$p,a]}" -v r="${BK[$p,r]}" \
            'BEGIN { if (r > 0) { v = (r - a) / r * 100; printf "%.3f", v < 0 ? 0 : v } else print "-" }')
    done
    # Peak RSS: VmHWM at the end (for idle-*, the largest round).
    for p in nginx sluice; do
        # shellcheck disable=SC2086
        RES[$s,$p,peak]=$(printf '%s\n' ${RES[$s,$p,hwm]} | sort -n | tail -n1)
    done
    if [[ -s $WORK/sluice.log ]] && grep -qv '^$' "$WORK/sluice.log"; then
        echo "  sluice stderr (last lines):"
        tail -n 3 "$WORK/sluice.log" | sed 's/^/    /'
    fi
    stop_proxies
    unset BK
done

# --- summary -----------------------------------------------------------------------------
echo
echo "== summary: median over $ROUNDS rounds (peak RSS: VmHWM summed over the proxy's processes)"
print_header
for s in "${SCEN[@]}"; do
    for p in nginx sluice; do
        note="backend reuse ${RES[$s,$p,bkreuse]}%"
        [[ $p == sluice && -n ${RES[$s,sluice,reuse]:-} ]] && note="upstream reuse ${RES[$s,sluice,reuse]}% (metrics), $note"
        [[ $s == idle-* ]] && note=""
        row "$s" "$p" "$(med "$s" "$p" rps)" "$(med "$s" "$p" p50)" "$(med "$s" "$p" p99)" \
            "$(med "$s" "$p" p999)" "$(med "$s" "$p" err)" "$(med "$s" "$p" cpu)" \
            "$(mib "${RES[$s,$p,peak]}")" "" "$note"
    done
    row "$s" "s/n" "$(rat "$(med "$s" sluice rps)" "$(med "$s" nginx rps)")" \
        "$(rat "$(med "$s" sluice p50)" "$(med "$s" nginx p50)")" \
        "$(rat "$(med "$s" sluice p99)" "$(med "$s" nginx p99)")" \
        "$(rat "$(med "$s" sluice p999)" "$(med "$s" nginx p999)")" "" \
        "$(rat "$(med "$s" sluice cpu)" "$(med "$s" nginx cpu)")" \
        "$(rat "${RES[$s,sluice,peak]}" "${RES[$s,nginx,peak]}")" "" ""
done

# --- targets -----------------------------------------------------------------------------
echo
echo "== issue 9 targets (sluice/nginx in this run; '-' = scenario not run)"
verdict() { # $1 = value, $2 = op (ge|le), $3 = bound
    if [[ $1 == - || $1 == n/a ]]; then echo "-"; return; fi
    awk -v v="$1" -v b="$3" -v op="$2" 'BEGIN {
        ok = (op == "ge") ? (v >= b) : (v <= b); print ok ? "PASS" : "FAIL" }'
}
target_line() { # $1 = title, $2 = op, $3 = bound, $4... = "label value" pairs
    local title=$1 op=$2 bound=$3 parts="" all=PASS v l
    shift 3
    while (($#)); do
        l=$1 v=$2
        shift 2
        parts+=" $l $v $(verdict "$v" "$op" "$bound"),"
        [[ $(verdict "$v" "$op" "$bound") == FAIL ]] && all=FAIL
    done
    [[ -z $parts ]] && all="-"
    printf '  %-4s %s:%s\n' "$all" "$title" "${parts%,}"
}
THROUGHPUT=(h1-small h1-64k tls-new-conn h2-mux h1-5000-ingresses gzip-json)
args=()
for s in "${THROUGHPUT[@]}"; do
    want "$s" && args+=("$s" "$(rat "$(med "$s" sluice rps)" "$(med "$s" nginx rps)")")
done
target_line "req/s >= 1.25x nginx" ge 1.25 "${args[@]}"
args=()
want rate-half && args+=("rate-half" "$(rat "$(med rate-half sluice p99)" "$(med rate-half nginx p99)")")
target_line "p99 at half nginx's max rate <= nginx (ratio <= 1)" le 1 "${args[@]}"
args=()
for s in "${THROUGHPUT[@]}" rate-half; do
    want "$s" && args+=("$s" "$(rat "$(med "$s" sluice cpu)" "$(med "$s" nginx cpu)")")
done
target_line "CPU per request <= 0.8x nginx" le 0.8 "${args[@]}"
args=()
for s in idle-10k idle-tls; do
    want "$s" && args+=("$s" "$(rat "${RES[$s,sluice,peak]}" "${RES[$s,nginx,peak]}")")
done
target_line "peak RSS with $IDLE idle connections <= nginx (ratio <= 1)" le 1 "${args[@]}"
args=()
for s in "${SCEN[@]}"; do
    [[ $s == idle-* ]] && continue
    args+=("$s" "${RES[$s,sluice,reuse]:--}")
done
target_line "sluice upstream requests on reused connections >= 99 (%)" ge 99 "${args[@]}"
echo "  load average before start: $LOAD_BEFORE; now: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "  'other CPU' in the per-round rows is CPU used by processes not started here: above ~10%"
echo "  the machine was shared during that run and its figures are noisy."
