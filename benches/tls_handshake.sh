#!/usr/bin/env bash
# Decides whether Sluice's TLS termination meets issue 3's target: full TLS handshakes per
# second at least 1.5x nginx's on the same cores, ECDSA P-256 and RSA 2048, TLS 1.3 and 1.2,
# same certificate on both, one worker each, one tiny proxied request per connection.
#
# Usage: bash benches/tls_handshake.sh [--install] [--no-build]
#   --install   apt-get install nginx, nghttp2-client (h2load), openssl, curl when missing
#   --no-build  use the existing target/release/sluice (or set SLUICE_BIN: never built)
# Environment: ROUNDS (3), DURATION (5: seconds per run), BATCH (1000: connections per h2load
#   invocation), WARMUP (1: seconds per server and key), QUIET_WAIT (120: before each run,
#   wait up to this many seconds for the machine to be idle; 0: don't), BASE_PORT (18400:
#   backend, +1 nginx ECDSA, +2 nginx RSA, +3..+5 sluice ECDSA https/http/admin, +6..+8 RSA).
# Everything listens on 127.0.0.1 only; every process started here is stopped on exit.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
BATCH=${BATCH:-1000}
WARMUP=${WARMUP:-1}
QUIET_WAIT=${QUIET_WAIT:-120}
BASE_PORT=${BASE_PORT:-18400}
BACKEND_PORT=$BASE_PORT
declare -A NGINX_PORT=([ecdsa]=$((BASE_PORT + 1)) [rsa]=$((BASE_PORT + 2)))
declare -A SLUICE_PORT=([ecdsa]=$((BASE_PORT + 3)) [rsa]=$((BASE_PORT + 6)))
declare -A SLUICE_HTTP_PORT=([ecdsa]=$((BASE_PORT + 4)) [rsa]=$((BASE_PORT + 7)))
declare -A SLUICE_ADMIN_PORT=([ecdsa]=$((BASE_PORT + 5)) [rsa]=$((BASE_PORT + 8)))
KEYS=(ecdsa rsa)
VERSIONS=(1.3 1.2)
HOST=bench.local

# shellcheck source=benches/lib.sh
. "$(dirname "$0")/lib.sh"
bench_args 13 "$@"
bench_tools nginx:nginx h2load:nghttp2-client openssl:openssl curl:curl
bench_sluice_bin
bench_workdir sluice-tls
bench_check_ports $(seq "$BASE_PORT" $((BASE_PORT + 8)))
bench_copy_sluice

# --- certificates ------------------------------------------------------------------------
# Self-signed leaves for bench.local (peers.md section 1 without the CA: the chain is one
# certificate on both servers, so both send the same bytes). Keys are PKCS#8.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=$HOST" -addext "subjectAltName=DNS:$HOST" \
    -keyout "$WORK/ecdsa.key" -out "$WORK/ecdsa.pem" 2> /dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 30 \
    -subj "/CN=$HOST" -addext "subjectAltName=DNS:$HOST" \
    -keyout "$WORK/rsa.key" -out "$WORK/rsa.pem" 2> /dev/null
chmod 644 "$WORK"/*.key

# --- nginx: backend and TLS terminator ---------------------------------------------------
nginx_conf() { # $1 = name; the http{} body on stdin
    nginx_preamble "$1"
    cat << EOF
events {
    multi_accept on;
    worker_connections 16384;
    use epoll;
}
worker_rlimit_nofile 20000;
http {
    access_log off;
    default_type text/plain;
    server_tokens off;
$(nginx_temp_paths "$1")
$(cat)
}
EOF
}

# The backend both proxies forward to: a fixed 19-byte 200 body, its own nginx and worker.
backend_conf backend "$BACKEND_PORT" > "$WORK/backend.conf"

# nginx terminating TLS the way ingress-nginx's template does (TLSv1.2 and TLSv1.3, default
# ciphers), except: no session cache and no session tickets, so no handshake can be resumed,
# and HTTP/1.1 only (h2load is run with --h1). It proxies to the backend through a keepalive
# upstream, the same work Sluice does per request.
nginx_tls_server() { # $1 = key type
    cat << EOF
    server {
        listen 127.0.0.1:${NGINX_PORT[$1]} ssl default_server reuseport backlog=4096;
        server_name $HOST;
        ssl_certificate     $WORK/$1.pem;
        ssl_certificate_key $WORK/$1.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384;
        ssl_prefer_server_ciphers on;
        ssl_session_cache off;
        ssl_session_tickets off;
        location / {
            proxy_set_header Host $HOST;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_http_version 1.1;
            proxy_buffering off;
            proxy_pass http://backend;
        }
    }
EOF
}
nginx_conf tls > "$WORK/tls.conf" << EOF
    upstream backend {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 320;
        keepalive_requests 10000;
    }
$(nginx_tls_server ecdsa)
$(nginx_tls_server rsa)
EOF

# --- Sluice: one process per key type, same certificate through a Secret -----------------
sluice_manifests() { # $1 = key type
    sluice_base_manifests "$BACKEND_PORT"
    sluice_tls_secret bench-tls "$WORK/$1.pem" "$WORK/$1.key"
    sluice_ingress bench "$HOST" bench-tls
}

start_nginx backend
BACKEND_MASTER=$STARTED
start_nginx tls
NGINX_MASTER=$STARTED
declare -A SLUICE_PID
for key in "${KEYS[@]}"; do
    mkdir -p "$WORK/manifests-$key"
    sluice_manifests "$key" > "$WORK/manifests-$key/bench.yaml"
    start_sluice "sluice-$key" "$WORK/manifests-$key" "${SLUICE_HTTP_PORT[$key]}" \
        "${SLUICE_PORT[$key]}" "${SLUICE_ADMIN_PORT[$key]}"
    SLUICE_PID[$key]=$STARTED
done

wait_tls() { # $1 = port, $2 = what
    wait_200 "$2" -k --resolve "$HOST:$1:127.0.0.1" "https://$HOST:$1/"
}
for _ in $(seq 100); do
    [[ $(curl -s "http://127.0.0.1:$BACKEND_PORT/") == "hello from backend" ]] && break
    sleep 0.1
done
for key in "${KEYS[@]}"; do
    wait_tls "${NGINX_PORT[$key]}" "nginx ($key)"
    wait_tls "${SLUICE_PORT[$key]}" "sluice ($key)"
done

# Both servers must present the very certificate made above for SNI bench.local, and return
# the same body.
fingerprint() { openssl x509 -noout -fingerprint -sha256 | cut -d= -f2; }
echo "certificates served for SNI $HOST (openssl s_client, SHA-256 fingerprint):"
for key in "${KEYS[@]}"; do
    want=$(fingerprint < "$WORK/$key.pem")
    for server in nginx sluice; do
        if [[ $server == nginx ]]; then port=${NGINX_PORT[$key]}; else port=${SLUICE_PORT[$key]}; fi
        got=$(openssl s_client -connect "127.0.0.1:$port" -servername "$HOST" < /dev/null 2> /dev/null |
            fingerprint || true)
        body=$(curl -sk --resolve "$HOST:$port:127.0.0.1" "https://$HOST:$port/")
        printf '  %-6s %-7s :%s %s %s\n' "$key" "$server" "$port" "${got:-none}" \
            "$([[ $got == "$want" ]] && echo ok || echo MISMATCH)"
        [[ $got == "$want" ]] || { echo "$server ($key) does not serve $WORK/$key.pem" >&2; exit 1; }
        [[ $body == "hello from backend" ]] || { echo "$server ($key) body: $body" >&2; exit 1; }
    done
done
read -r -a NGINX_PIDS <<< "$(nginx_pids "$NGINX_MASTER")"
read -r -a BACKEND_PIDS <<< "$(nginx_pids "$BACKEND_MASTER")"
ALL_SERVER_PIDS=("${BACKEND_PIDS[@]}" "${NGINX_PIDS[@]}" "${SLUICE_PID[@]}")

# h2load offers TLS 1.3 and 1.2 and has no option to cap the version; OpenSSL's system
# default configuration (read by every SSL_CTX_new) can: `Protocol = -TLSv1.3`. Both configs
# also drop the session ticket extension (`Options = -SessionTicket`): the client neither
# offers nor keeps anything to resume with.
client_conf() { # $1 = TLS version
    cat << EOF
openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
Options = -SessionTicket
EOF
    [[ $1 == 1.2 ]] && echo "Protocol = -TLSv1.3"
    return 0
}
for version in "${VERSIONS[@]}"; do client_conf "$version" > "$WORK/client-tls$version.cnf"; done

# --- measure -----------------------------------------------------------------------------
# One measurement: h2load invocations of BATCH connections each, one HTTP/1.1 request per
# connection (-n BATCH -c BATCH: every client object, hence every SSL object, is new and
# used once: a full handshake each), until $2 seconds have passed. Sets HS (handshakes = 2xx
# responses), RATE (handshakes/s), ERRORS (failed + errored + non-2xx), SERVER_CPU (% of one
# core), CPU_PER_1K (server CPU seconds per 1000 handshakes), CLIENT_CPU (h2load, % of one
# core), OTHER_CPU (machine CPU not used by h2load, the backend and the servers, % of one
# core), PROTO and CIPHER (as h2load reports them).
run_h2load() { # $1 = port, $2 = seconds, $3 = TLS version, $4 = output prefix, $5... = server pids
    local port=$1 seconds=$2 version=$3 out=$4
    shift 4
    local t0 p0 b0 c0 m0 t1 p1 b1 c1 m1 i=0 end
    t0=$EPOCHREALTIME
    ticks_of "$@"; p0=$TICKS
    ticks_of "${ALL_SERVER_PIDS[@]}"; b0=$TICKS
    children_ticks; c0=$TICKS
    machine_ticks; m0=$TICKS
    end=$((${t0%.*} + seconds))
    while :; do
        i=$((i + 1))
        # The URI's host gives SNI and Host: bench.local; --connect-to gives the address.
        OPENSSL_CONF=$WORK/client-tls$version.cnf h2load --h1 -t 1 -n "$BATCH" -c "$BATCH" \
            --connect-to="127.0.0.1:$port" "https://$HOST:$port/" > "$out.$i" 2>&1 || true
        ((${EPOCHREALTIME%.*} < end)) || break
    done
    machine_ticks; m1=$TICKS
    children_ticks; c1=$TICKS
    ticks_of "${ALL_SERVER_PIDS[@]}"; b1=$TICKS
    ticks_of "$@"; p1=$TICKS
    t1=$EPOCHREALTIME
    read -r HS ERRORS < <(cat "$out".* | awk '
        /^requests:/ { fail += $10 + $12 + $14 }
        /^status codes:/ { ok += $3; bad += $5 + $7 + $9 }
        END { print ok + 0, fail + bad + 0 }')
    PROTO=$(awk '/^TLS Protocol:/ { print $3 }' "$out".* | sort | uniq -c | awk '{ printf "%s%s", s, $2; s = "," }')
    CIPHER=$(awk '/^Cipher:/ { print $2 }' "$out".* | sort -u | paste -sd, -)
    read -r RATE SERVER_CPU CPU_PER_1K CLIENT_CPU OTHER_CPU < <(awk -v hz="$HZ" -v t0="$t0" \
        -v t1="$t1" -v p="$((p1 - p0))" -v b="$((b1 - b0))" -v c="$((c1 - c0))" \
        -v m="$((m1 - m0))" -v n="$HS" 'BEGIN {
            wall = t1 - t0; other = (m - b - c) / hz / wall * 100; if (other < 0) other = 0
            printf "%.0f %.0f %.3f %.0f %.0f\n", n / wall, p / hz / wall * 100,
                (n ? p / hz / n * 1000 : 0), c / hz / wall * 100, other }')
}

echo
echo "full TLS handshakes, h2load --h1 -t1 -n$BATCH -c$BATCH (one request per connection) for" \
    "${DURATION}s per run, $ROUNDS rounds;"
echo "nginx $(nginx -v 2>&1 | sed 's/.*\///') ($(openssl version | cut -d' ' -f1-2)), sluice $SLUICE_VERSION;" \
    "one worker each; $(nproc) CPUs; backend 127.0.0.1:$BACKEND_PORT"
echo "warm-up (${WARMUP}s per server and key)..."
for key in "${KEYS[@]}"; do
    run_h2load "${NGINX_PORT[$key]}" "$WARMUP" 1.3 "$WORK/warmup-nginx-$key" "${NGINX_PIDS[@]}"
    run_h2load "${SLUICE_PORT[$key]}" "$WARMUP" 1.3 "$WORK/warmup-sluice-$key" "${SLUICE_PID[$key]}"
done

printf '\n%-5s %-5s %-3s %-6s %8s %6s %7s %10s %7s %7s %5s %6s  %s\n' round key tls server "hs/s" \
    errors "srv CPU" "CPU s/1k" "h2load" "other" load waited "negotiated"
declare -A RATES CPUS
for round in $(seq "$ROUNDS"); do
    for key in "${KEYS[@]}"; do
        for version in "${VERSIONS[@]}"; do
            # Alternate which server goes first, so neither always runs on a warmer machine.
            if ((round % 2)); then order="nginx sluice"; else order="sluice nginx"; fi
            for server in $order; do
                out=$WORK/r$round-$key-$version-$server
                wait_quiet
                if [[ $server == nginx ]]; then
                    run_h2load "${NGINX_PORT[$key]}" "$DURATION" "$version" "$out" "${NGINX_PIDS[@]}"
                else
                    run_h2load "${SLUICE_PORT[$key]}" "$DURATION" "$version" "$out" "${SLUICE_PID[$key]}"
                fi
                if [[ $PROTO != "TLSv$version" ]]; then
                    echo "expected TLSv$version, h2load reported '$PROTO' against $server ($key)" >&2
                    exit 1
                fi
                printf '%-5s %-5s %-3s %-6s %8s %6s %6s%% %10s %6s%% %6s%% %5s %5ss  %s\n' "$round" \
                    "$key" "$version" "$server" "$RATE" "$ERRORS" "$SERVER_CPU" "$CPU_PER_1K" \
                    "$CLIENT_CPU" "$OTHER_CPU" "$(cut -d' ' -f1 /proc/loadavg)" "$WAITED" "$CIPHER"
                RATES[$key,$version,$server]+="$RATE "
                CPUS[$key,$version,$server]+="$CPU_PER_1K "
            done
        done
    done
done

echo
echo "summary (median over $ROUNDS rounds):"
printf '%-5s %-3s %9s %9s %7s  %11s %11s %7s %9s\n' key tls "nginx" "sluice" "ratio" \
    "nginx s/1k" "sluice s/1k" "ratio" "hs/CPU-s"
printf '%-5s %-3s %9s %9s %7s  %11s %11s %7s %9s\n' "" "" "hs/s" "hs/s" "s/n" "" "" "s/n" "ratio s/n"
for key in "${KEYS[@]}"; do
    for version in "${VERSIONS[@]}"; do
        # shellcheck disable=SC2086 # word splitting of the space-separated samples is wanted
        {
            nr=$(median ${RATES[$key,$version,nginx]}); sr=$(median ${RATES[$key,$version,sluice]})
            nc=$(median ${CPUS[$key,$version,nginx]}); sc=$(median ${CPUS[$key,$version,sluice]})
        }
        printf '%-5s %-3s %9s %9s %7s  %11s %11s %7s %9s\n' "$key" "$version" "$nr" "$sr" \
            "$(ratio "$sr" "$nr")" "$nc" "$sc" "$(ratio "$sc" "$nc")" "$(ratio "$nc" "$sc")"
    done
done
echo "  hs/s ratio s/n: sluice/nginx handshake rate (target >= 1.5; only meaningful when both"
echo "  servers are near 100% CPU above, otherwise the client on the other core is the limit);"
echo "  s/1k: server CPU seconds per 1000 handshakes (lower is better); hs/CPU-s ratio s/n:"
echo "  handshakes per CPU second of sluice over nginx's, i.e. the rate ratio on equal cores."
echo "  load average before start: $LOAD_BEFORE; now: $(cut -d' ' -f1-3 /proc/loadavg)" \
    "(the run itself adds ~2: h2load and the server under test)"
for key in "${KEYS[@]}"; do
    if [[ -s $WORK/sluice-$key.log ]]; then
        echo "sluice ($key) stderr (last lines):"
        tail -n 5 "$WORK/sluice-$key.log"
    fi
done
