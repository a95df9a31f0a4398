#!/usr/bin/env bash
# Soak test: Sluice under mixed wrk load (small and 64 KiB GETs, 4 KiB POSTs, over keep-alive)
# while its configuration changes every second (endpoints, annotations, an Ingress added and
# removed). Prints RSS after warm-up and at the end, the drift, and every failed request
# (non-2xx answers and socket errors); exits 1 when a request failed or RSS drifted 10% or more.
#
# Usage: scripts/soak.sh [SECONDS]   (default 1800)
# Environment: SLUICE_BIN (default target/release/sluice, built when missing),
#   CONNECTIONS (64), THREADS (2), BASE_PORT (18400: backends +0 +1, sluice +2, admin +3).
# Needs nginx (the backends) and wrk. Everything listens on 127.0.0.1; every process started
# here is stopped on exit.
set -euo pipefail

DURATION=${1:-1800}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
BASE_PORT=${BASE_PORT:-18400}
B1=$BASE_PORT
B2=$((BASE_PORT + 1))
HTTP=$((BASE_PORT + 2))
ADMIN=$((BASE_PORT + 3))
cd "$(dirname "$0")/.."

for tool in nginx wrk curl; do
    command -v "$tool" > /dev/null || { echo "missing $tool (apt-get install nginx wrk curl)" >&2; exit 1; }
done
SLUICE_BIN=${SLUICE_BIN:-target/release/sluice}
if [[ ! -x $SLUICE_BIN ]]; then
    cargo build --release --bin sluice
fi

WORK=$(mktemp -d /tmp/sluice-soak.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2> /dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2> /dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2> /dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Two nginx backends: a short body, 64 KiB for /big, and POSTs read in full.
head -c 65536 /dev/zero | tr '\0' 'x' > "$WORK/big"
for port in $B1 $B2; do
    mkdir -p "$WORK/tmp-$port"
    cat > "$WORK/backend-$port.conf" << EOF
worker_processes 1;
daemon off;
pid $WORK/backend-$port.pid;
error_log $WORK/backend-$port.error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    default_type text/plain;
    client_body_temp_path $WORK/tmp-$port/body;
    proxy_temp_path $WORK/tmp-$port/proxy;
    fastcgi_temp_path $WORK/tmp-$port/fastcgi;
    uwsgi_temp_path $WORK/tmp-$port/uwsgi;
    scgi_temp_path $WORK/tmp-$port/scgi;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$port;
        location = /big { alias $WORK/big; }
        location /upload { client_max_body_size 1m; proxy_pass http://127.0.0.1:$port/echo; }
        location /echo { return 200 "stored\n"; }
        location / { return 200 "backend $port\n"; }
    }
}
EOF
    nginx -c "$WORK/backend-$port.conf" -e "$WORK/backend-$port.error.log" &
    PIDS+=($!)
done

MANIFESTS=$WORK/manifests
mkdir -p "$MANIFESTS"
cat > "$MANIFESTS/base.yaml" << EOF
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: nginx}
spec: {controller: k8s.io/ingress-nginx}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: soak}
spec: {ports: [{name: http, port: 80}]}
EOF
# Generation N of the changing part: endpoints alternate between one and both backends, an
# annotation value changes every time, and every other second a second Ingress comes or goes.
write_config() { # $1 = generation
    local n=$1 endpoints="[\"127.0.0.1\"]"
    local file=$MANIFESTS/changing.yaml
    {
        cat << EOF
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: soak, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: $B1}]
endpoints: [{addresses: $endpoints, conditions: {ready: true}}]
---
EOF
        if ((n % 2)); then
            cat << EOF
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-b, namespace: soak, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: $B2}]
endpoints: [{addresses: $endpoints, conditions: {ready: true}}]
---
EOF
        fi
        cat << EOF
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: web
  namespace: soak
  annotations:
    nginx.ingress.kubernetes.io/configuration-snippet: 'more_set_headers "X-Generation: $n";'
    nginx.ingress.kubernetes.io/proxy-read-timeout: "$((10 + n % 5))"
spec:
  ingressClassName: nginx
  rules:
  - host: soak.example
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
---
EOF
        if ((n % 4 < 2)); then
            cat << EOF
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: extra-$n, namespace: soak}
spec:
  ingressClassName: nginx
  rules:
  - host: extra-$n.example
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
EOF
        fi
    } > "$file.tmp"
    mv "$file.tmp" "$file"
}
write_config 0

"$SLUICE_BIN" --manifests "$MANIFESTS" --http-port "$HTTP" --https-port "$((BASE_PORT + 4))" \
    --healthz-port "$ADMIN" --metrics-port "$ADMIN" --bind-address 127.0.0.1 \
    --healthz-host 127.0.0.1 > "$WORK/sluice.log" 2>&1 &
SLUICE=$!
PIDS+=("$SLUICE")
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$ADMIN/healthz" > /dev/null 2>&1 && break
    sleep 0.1
done
curl -fs -H 'Host: soak.example' "http://127.0.0.1:$HTTP/" > /dev/null || {
    echo "sluice does not serve soak.example:" >&2; cat "$WORK/sluice.log" >&2; exit 1; }

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$SLUICE/status"; }

# The mix: 60% small GETs, 25% 64 KiB GETs, 15% 4 KiB POSTs.
cat > "$WORK/mix.lua" << 'EOF'
local body = string.rep("p", 4096)
local n = 0
request = function()
    n = n + 1
    local pick = n % 20
    if pick < 12 then
        return wrk.format("GET", "/", {Host = "soak.example"})
    elseif pick < 17 then
        return wrk.format("GET", "/big", {Host = "soak.example"})
    end
    return wrk.format("POST", "/upload", {Host = "soak.example", ["Content-Type"] = "text/plain"}, body)
end
EOF

echo "soak: ${DURATION}s, $CONNECTIONS connections, a configuration change every second"
wrk -t "$THREADS" -c "$CONNECTIONS" -d "${DURATION}s" --timeout 10s -s "$WORK/mix.lua" \
    "http://127.0.0.1:$HTTP/" > "$WORK/wrk.txt" 2>&1 &
WRK=$!
PIDS+=("$WRK")

WARMUP=$((DURATION / 10 < 30 ? DURATION / 10 : 30))
RSS_START=""
started=$SECONDS
generation=1
while kill -0 "$WRK" 2> /dev/null; do
    sleep 1
    write_config "$generation"
    generation=$((generation + 1))
    elapsed=$((SECONDS - started))
    if [[ -z $RSS_START ]] && ((elapsed >= WARMUP)); then
        RSS_START=$(rss_kib)
        echo "RSS after ${elapsed}s warm-up: ${RSS_START} KiB"
    fi
    if ((elapsed % 60 == 0)); then
        echo "  ${elapsed}s: RSS $(rss_kib) KiB, generation $generation"
    fi
done
wait "$WRK" || true
RSS_END=$(rss_kib)
RSS_START=${RSS_START:-$RSS_END}

cat "$WORK/wrk.txt"
total=$(awk '/requests in/ {print $1}' "$WORK/wrk.txt")
non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$WORK/wrk.txt")
socket=$(awk -F'[ ,]+' '/Socket errors:/ {print $4 + $6 + $8 + $10}' "$WORK/wrk.txt")
failed=$(( ${non2xx:-0} + ${socket:-0} ))
drift=$(awk -v a="$RSS_START" -v b="$RSS_END" 'BEGIN {printf "%.1f", (b - a) * 100 / a}')
applied=$(curl -fs "http://127.0.0.1:$ADMIN/metrics" | awk '/^sluice_snapshot_generation/ {print $1 "=" $2}' | tr '\n' ' ')
echo "== soak summary"
echo "duration ${DURATION}s, configuration changes written: $((generation - 1)) ($applied)"
echo "requests: ${total:-0}, failed: $failed (non-2xx ${non2xx:-0}, socket errors ${socket:-0})"
echo "RSS start ${RSS_START} KiB, end ${RSS_END} KiB, drift ${drift}%"
if ((failed > 0)) || awk -v d="$drift" 'BEGIN {exit !(d >= 10)}'; then
    echo "soak FAILED" >&2
    exit 1
fi
echo "soak passed"
