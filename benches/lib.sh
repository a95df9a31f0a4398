# shellcheck shell=bash disable=SC2034 # variables set here are read by the caller
# Shared setup for the load scripts in benches/ (load.sh, tls_handshake.sh, compare.sh): sourced,
# not run. Arguments and tools, the Sluice binary, a work directory whose processes are all
# stopped on exit, the backend nginx, nginx rendered the way ingress-nginx renders its
# nginx.conf, Sluice's manifests, and the CPU and memory accounting read from /proc.
#
# The caller sets `set -euo pipefail` and sources this file with
#   . "$(dirname "$0")/lib.sh"
# Everything here listens on 127.0.0.1 only.

# --- arguments, tools, binary ------------------------------------------------------------

# Parses the flags every script takes: --install, --no-build, -h/--help (prints the header
# comment's lines 2..$1 of the calling script). Sets INSTALL and BUILD; `cd`s to the repo root.
bench_args() { # $1 = last line of the usage comment, $2... = the script's arguments
    local help_end=$1 arg
    shift
    INSTALL=0
    BUILD=1
    for arg in "$@"; do
        case $arg in
            --install) INSTALL=1 ;;
            --no-build) BUILD=0 ;;
            -h | --help) sed -n "2,${help_end}p" "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
            *) echo "unknown argument: $arg" >&2; exit 2 ;;
        esac
    done
    cd "$(dirname "$0")/.." || exit 1
    LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
}

# Checks that each command exists; with --install apt-get installs the missing packages,
# otherwise prints the command and exits.
bench_tools() { # command[:package]...
    local tool missing=() cmd
    for tool in "$@"; do
        command -v "${tool%%:*}" > /dev/null || missing+=("${tool#*:}")
    done
    ((${#missing[@]})) || return 0
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
}

# The Sluice binary: $SLUICE_BIN when set (never built), else $CARGO_TARGET_DIR/release/sluice,
# built first unless --no-build. Sets SLUICE_BIN.
bench_sluice_bin() {
    if [[ -n ${SLUICE_BIN:-} ]]; then
        [[ -x $SLUICE_BIN ]] || { echo "SLUICE_BIN=$SLUICE_BIN is not an executable" >&2; exit 1; }
        return 0
    fi
    SLUICE_BIN=${CARGO_TARGET_DIR:-target}/release/sluice
    if ((BUILD)); then
        echo "building sluice (cargo build --release)..."
        cargo build --release --bin sluice
    fi
    [[ -x $SLUICE_BIN ]] || { echo "no $SLUICE_BIN; build it or drop --no-build" >&2; exit 1; }
}

# --- work directory and processes --------------------------------------------------------

# Creates WORK (removed on exit unless KEEP_WORK is set) and PIDS (every process started through bench_spawn or
# pushed onto it is stopped on exit: TERM, up to 5 s, then KILL).
bench_workdir() { # $1 = mktemp prefix
    WORK=$(mktemp -d "/tmp/$1.XXXXXX")
    chmod 755 "$WORK" # nginx workers run as nobody when started as root
    PIDS=()
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

# Stops the given processes: TERM to all, then up to 5 s each, then KILL.
bench_stop() { # pids...
    local pid
    for pid in "$@"; do
        kill -TERM "$pid" 2> /dev/null || true
    done
    for pid in "$@"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2> /dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2> /dev/null || true
        wait "$pid" 2> /dev/null || true
    done
}

# Stops the given processes and forgets them (for processes restarted during a run).
bench_stop_forget() { # pids...
    local pid keep=() p
    bench_stop "$@"
    for p in "${PIDS[@]}"; do
        for pid in "$@"; do [[ $p == "$pid" ]] && continue 2; done
        keep+=("$p")
    done
    PIDS=("${keep[@]}")
}

bench_cleanup() {
    ((${#PIDS[@]})) && bench_stop "${PIDS[@]}"
    if [[ -n ${KEEP_WORK:-} ]]; then echo "work directory kept: $WORK" >&2; else rm -rf "$WORK"; fi
}

bench_check_ports() { # ports...
    local port
    for port in "$@"; do
        if (echo > "/dev/tcp/127.0.0.1/$port") 2> /dev/null; then
            echo "port $port on 127.0.0.1 is already in use; set BASE_PORT" >&2
            exit 1
        fi
    done
}

# A private copy of the binary: others rebuilding target/ during the run cannot swap it. Sets
# SLUICE (the copy) and SLUICE_VERSION.
bench_copy_sluice() {
    cp "$SLUICE_BIN" "$WORK/sluice"
    SLUICE=$WORK/sluice
    SLUICE_VERSION="$(git describe --always --dirty 2> /dev/null || echo unknown), binary $SLUICE_BIN of $(date -r "$SLUICE_BIN" '+%F %T')"
}

# --- nginx -------------------------------------------------------------------------------

# Common nginx preamble: one worker, not daemonised, everything under $WORK.
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

# The backend: a fixed small 200 body (peers.md section 3) on /, its own nginx with one worker.
# Extra server-level lines (more locations) come on stdin when $3 is "+".
backend_conf() { # $1 = name, $2 = port, [$3 = "+": extra lines on stdin]
    local extra=""
    [[ ${3:-} == + ]] && extra=$'\n'$(cat)
    nginx_preamble "$1"
    cat << EOF
events { worker_connections 4096; }
http {
    access_log off;
    default_type text/plain;
$(nginx_temp_paths "$1")
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$2;
        location / { return 200 "hello from backend\n"; }$extra
    }
}
EOF
}

# The location block ingress-nginx renders for a path of an Ingress (proxy headers, timeouts,
# buffering, keepalive upstream) with default ConfigMap values, minus its Lua.
ingress_location() {
    cat << 'EOF'
        location / {
            proxy_set_header Host              $http_host;
            proxy_set_header Upgrade           $http_upgrade;
            proxy_set_header Connection        $connection_upgrade;
            proxy_set_header X-Request-ID      $req_id;
            proxy_set_header X-Real-IP         $remote_addr;
            proxy_set_header X-Forwarded-For   $remote_addr;
            proxy_set_header X-Forwarded-Host  $http_host;
            proxy_set_header X-Forwarded-Port  $server_port;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Scheme $scheme;
            proxy_set_header X-Scheme          $scheme;
            proxy_set_header X-Original-URI    $request_uri;
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
EOF
}

# The request-id and Connection maps and the keepalive upstream that ingress-nginx's
# nginx.tmpl renders in every http block with default ConfigMap values. $1 = backend port.
ingress_nginx_upstream() {
    cat << EOF
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
        server 127.0.0.1:$1;
        keepalive 320;
        keepalive_time 1h;
        keepalive_timeout 60s;
        keepalive_requests 10000;
    }
EOF
}

# nginx as ingress-nginx's nginx.tmpl renders it with default ConfigMap values, minus the Lua
# (balancer_by_lua, monitor) that ingress-nginx runs per request: so this baseline is, if
# anything, faster than a real ingress-nginx pod. Options (key=value):
#   name=NAME (required), http=PORT (required): the catch-all server `_`.
#   https=PORT cert=FILE key=FILE host=NAME: a server for host NAME on http and https (ssl,
#     http2) with that certificate, as ingress-nginx renders an Ingress with `tls:`.
#   gzip=LEVEL: the ConfigMap's use-gzip "true" and gzip-level LEVEL.
#   hosts=N: N more servers h1.bench.local .. hN.bench.local (N Ingresses with one host each).
#   status=PORT: the stub_status server ingress-nginx runs on 127.0.0.1:10246 /nginx_status.
#   rlimit=N: worker_rlimit_nofile (ingress-nginx sets it from the container's limit).
ingress_nginx_conf() {
    local opt name="" http="" https="" cert="" key="" host="" gzip="" hosts=0 status="" rlimit=""
    for opt in "$@"; do
        case $opt in
            name=* | http=* | https=* | cert=* | key=* | host=* | gzip=* | hosts=* | status=* | rlimit=*)
                printf -v "${opt%%=*}" '%s' "${opt#*=}" ;;
            *) echo "ingress_nginx_conf: unknown option $opt" >&2; return 2 ;;
        esac
    done
    local location
    location=$(ingress_location)
    nginx_preamble "$name"
    [[ -n $rlimit ]] && echo "worker_rlimit_nofile $rlimit;"
    cat << EOF
events {
    multi_accept on;
    worker_connections 16384;
    use epoll;
}
http {
    access_log off;
    default_type text/html;
$(nginx_temp_paths "$name")
    server_tokens off;
    keepalive_timeout 75s;
    keepalive_requests 1000;
    client_header_timeout 60s;
    proxy_headers_hash_max_size 512;
    proxy_headers_hash_bucket_size 64;
EOF
    if ((hosts)); then
        # ingress-nginx derives server_names_hash_bucket_size from the longest name; the
        # max size has to be raised through the ConfigMap (server-name-hash-max-size) for
        # thousands of hosts or nginx refuses to start.
        echo "    server_names_hash_max_size $((hosts * 8));"
        echo "    server_names_hash_bucket_size 64;"
    fi
    if [[ -n $https ]]; then
        cat << 'EOF'
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    ssl_session_timeout 10m;
    ssl_session_tickets off;
    ssl_buffer_size 4k;
    ssl_ciphers 'ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384';
    ssl_prefer_server_ciphers on;
    ssl_ecdh_curve auto;
    http2_max_concurrent_streams 128;
EOF
    fi
    if [[ -n $gzip ]]; then
        cat << EOF
    gzip on;
    gzip_comp_level $gzip;
    gzip_http_version 1.1;
    gzip_min_length 256;
    gzip_types application/atom+xml application/javascript application/x-javascript application/json application/rss+xml application/vnd.ms-fontobject application/x-font-ttf application/x-web-app-manifest+json application/xhtml+xml application/xml font/opentype image/svg+xml image/x-icon text/css text/javascript text/plain text/x-component;
    gzip_proxied any;
    gzip_vary on;
EOF
    fi
    cat << EOF

$(ingress_nginx_upstream "$BACKEND_PORT")

    server {
        server_name _;
        listen 127.0.0.1:$http default_server reuseport backlog=4096;
$location
    }
EOF
    if [[ -n $https ]]; then
        cat << EOF

    server {
        server_name $host;
        listen 127.0.0.1:$http;
        listen 127.0.0.1:$https ssl http2 default_server reuseport backlog=4096;
        ssl_certificate     $cert;
        ssl_certificate_key $key;
$location
    }
EOF
    fi
    if ((hosts)); then
        local i
        for ((i = 1; i <= hosts; i++)); do
            printf '\n    server {\n        server_name h%d.bench.local;\n        listen 127.0.0.1:%s;\n%s\n    }\n' \
                "$i" "$http" "$location"
        done
    fi
    if [[ -n $status ]]; then
        cat << EOF

    server {
        listen 127.0.0.1:$status;
        location /nginx_status { stub_status on; }
    }
EOF
    fi
    echo "}"
}

# Checks a config and starts nginx on it in the foreground (its master is ours to stop). Sets
# STARTED (the master's pid).
start_nginx() { # $1 = name (config $WORK/$1.conf)
    nginx -t -q -p "$WORK" -c "$WORK/$1.conf" -e "$WORK/$1.error.log"
    nginx -p "$WORK" -c "$WORK/$1.conf" -e "$WORK/$1.error.log" &
    STARTED=$!
    PIDS+=("$STARTED")
}

# An nginx master and its workers.
nginx_pids() { # $1 = master pid
    # shellcheck disable=SC2046 # one pid per word
    echo "$1" $(ps -o pid= --ppid "$1")
}

# --- Sluice ------------------------------------------------------------------------------

# The IngressClass, the ConfigMap (access log off, plus the given `key: "value"` lines), the
# backend's Service and its EndpointSlice.
sluice_base_manifests() { # $1 = backend port, $2... = extra ConfigMap data lines
    local port=$1 line
    shift
    cat << EOF
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
EOF
    for line in "$@"; do echo "  $line"; done
    cat << EOF
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
    targetPort: $port
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
  port: $port
endpoints:
- addresses: ["127.0.0.1"]
  conditions:
    ready: true
EOF
}

# A kubernetes.io/tls Secret.
sluice_tls_secret() { # $1 = name, $2 = certificate file, $3 = key file
    cat << EOF
---
apiVersion: v1
kind: Secret
metadata:
  name: $1
  namespace: bench
type: kubernetes.io/tls
data:
  tls.crt: $(base64 -w0 < "$2")
  tls.key: $(base64 -w0 < "$3")
EOF
}

# An Ingress sending / of a host (or of every host when $2 is empty) to the backend.
sluice_ingress() { # $1 = name, [$2 = host], [$3 = TLS secret]
    cat << EOF
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: $1
  namespace: bench
spec:
  ingressClassName: nginx
EOF
    if [[ -n ${3:-} ]]; then
        printf '  tls:\n  - hosts: [%s]\n    secretName: %s\n' "$2" "$3"
    fi
    echo "  rules:"
    if [[ -n ${2:-} ]]; then echo "  - host: $2"; echo "    http:"; else echo "  - http:"; fi
    cat << EOF
      paths:
      - path: /
        pathType: Prefix
        backend:
          service:
            name: backend
            port:
              name: http
EOF
}

# N Ingresses h1.bench.local .. hN.bench.local, fast (printf only).
sluice_host_ingresses() { # $1 = N
    local i
    for ((i = 1; i <= $1; i++)); do
        printf -- '---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: h%d\n  namespace: bench\nspec:\n  ingressClassName: nginx\n  rules:\n  - host: h%d.bench.local\n    http:\n      paths:\n      - path: /\n        pathType: Prefix\n        backend:\n          service:\n            name: backend\n            port:\n              name: http\n' "$i" "$i"
    done
}

# Starts Sluice in standalone mode on a manifests directory, one worker thread. Sets STARTED.
start_sluice() { # $1 = name, $2 = manifests dir, $3 = http port, $4 = https port, $5 = admin port
    RUST_LOG=${RUST_LOG:-warn} "${SLUICE:-$SLUICE_BIN}" \
        --manifests "$2" \
        --configmap bench/sluice \
        --worker-threads 1 \
        --bind-address 127.0.0.1 \
        --http-port "$3" \
        --https-port "$4" \
        --healthz-host 127.0.0.1 \
        --healthz-port "$5" \
        --metrics-port "$5" \
        --state-dir "$WORK/state-$1" \
        > "$WORK/$1.stdout" 2> "$WORK/$1.log" &
    STARTED=$!
    PIDS+=("$STARTED")
}

# Waits until a URL answers 200 (curl options before the URL, e.g. -k --resolve ...).
wait_200() { # $1 = what, $2... = curl arguments
    local what=$1 code=""
    shift
    for _ in $(seq 150); do
        code=$(curl -s -o /dev/null -w '%{http_code}' "$@" || true)
        [[ $code == 200 ]] && return 0
        sleep 0.1
    done
    echo "$what did not answer 200 on ${*: -1} (last: $code); logs in $WORK:" >&2
    tail -n 20 "$WORK"/*.log >&2 || true
    exit 1
}

# --- measuring ---------------------------------------------------------------------------

# wrk's latency figures to milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
        printf "%.3f", n }'
}

# CPU accounting, all with shell builtins (no fork between two readings): clock ticks of a set
# of processes (utime + stime), of this shell's waited-for children (cutime + cstime: the load
# tool), and of the whole machine (busy = everything but idle and iowait). Each sets TICKS.
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
    local user nice system irq softirq steal
    read -r _ user nice system _ _ irq softirq steal _ < /proc/stat
    TICKS=$((user + nice + system + irq + softirq + steal))
}

# Sum of a /proc/PID/status memory field (VmRSS, VmHWM) over processes, in KiB.
mem_kib() { # $1 = field, $2... = pids
    local field=$1 pid sum=0 k v rest
    shift
    for pid in "$@"; do
        while read -r k v rest; do
            [[ $k == "$field:" ]] && { sum=$((sum + v)); break; }
        done < "/proc/$pid/status"
    done
    echo "$sum"
}

# Between runs nothing started here is busy, so the machine's busy time is other people's.
# Wait (up to QUIET_WAIT seconds) for a second in which it is below 20 % of one core; sets
# WAITED (seconds waited, "+" appended when it gave up).
wait_quiet() {
    local m0 m1 start=${EPOCHREALTIME%.*}
    WAITED=0
    ((QUIET_WAIT > 0)) || return 0
    while :; do
        machine_ticks; m0=$TICKS
        sleep 1
        machine_ticks; m1=$TICKS
        ((m1 - m0 < HZ / 5)) && break
        WAITED=$((${EPOCHREALTIME%.*} - start))
        if ((WAITED >= QUIET_WAIT)); then WAITED+="+"; break; fi
    done
}

# Statistics over arguments; the printf formats are MEDIAN_FORMAT and RATIO_FORMAT.
mean() { printf '%s\n' "$@" | awk '{ s += $1 } END { printf "%.2f", s / NR }'; }
median() { printf '%s\n' "$@" | sort -g | awk -v f="${MEDIAN_FORMAT:-%.6g}" '{ a[NR] = $1 } END {
    printf f, (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" -v f="${RATIO_FORMAT:-%.2f}" 'BEGIN {
    if (b + 0 == 0) print "n/a"; else printf f, a / b }'; }
