#!/usr/bin/env bash
# Decides whether a configuration change reaches live traffic fast enough and without cost
# (issue 9: "a change visible in under 1 s at p99 with 5 000 Ingresses loaded while under load,
# with zero failed requests"), and measures what nginx does with the same change.
#
# Both proxies hold 5 000 Ingresses (host app-N.example -> Service app-N) and carry steady wrk
# keep-alive load spread over those hosts, plus a few upgraded (WebSocket handshake) connections
# echoing a message every 200 ms. CHANGES times, one per INTERVAL seconds, a new host
# chg-I.example is added to one Ingress; a prober opens a new connection every ~5 ms and asks for
# it until it answers 200 with the backend's body.
#   Sluice: the app's manifest file is rewritten into the watched --manifests folder by an
#     atomic rename; latency is rename -> first probe that sees the new host.
#   nginx: the whole server list is rendered again (ingress-nginx renders one nginx.conf), tested
#     with `nginx -t` (ingress-nginx tests before it writes), renamed into place and applied with
#     `nginx -s reload`; latency is test start -> visible, and reload signal -> visible.
#
# Usage: bash benches/propagation.sh [--install] [--build] [--only sluice|nginx]
#   --install   apt-get install nginx, wrk and curl when missing (default: print the command, exit)
#   --build     cargo build --release --bin sluice first (default: use SLUICE_BIN as is)
#   --only X    run one proxy only
# Environment: SLUICE_BIN (target/release/sluice), INGRESSES (5000), APPS_PER_FILE (1: one file
#   per Ingress + Service + EndpointSlice), CHANGES (60), INTERVAL (1.0 s), CONNECTIONS (20),
#   THREADS (1), UPGRADED (4 long-lived upgraded connections), POLL_MS (5), NGINX_TEST (1: run
#   `nginx -t` before each reload, as ingress-nginx does), BASE_PORT (18500: backend, +1 upgrade
#   echo backend, +2 nginx, +3 sluice http, +4 sluice https, +5 sluice admin), KEEP_WORK (0; 1 keeps
#   the temp dir with the logs, wrk output and per-change JSON).
# Everything listens on 127.0.0.1 only; every process started here is stopped on exit.
set -euo pipefail
# shellcheck source=benches/lib.sh
. "$(dirname "$0")/lib.sh"

INGRESSES=${INGRESSES:-5000}
APPS_PER_FILE=${APPS_PER_FILE:-1}
CHANGES=${CHANGES:-60}
INTERVAL=${INTERVAL:-1.0}
CONNECTIONS=${CONNECTIONS:-20}
THREADS=${THREADS:-1}
UPGRADED=${UPGRADED:-4}
POLL_MS=${POLL_MS:-5}
NGINX_TEST=${NGINX_TEST:-1}
BASE_PORT=${BASE_PORT:-18500}
BACKEND_PORT=$BASE_PORT
ECHO_PORT=$((BASE_PORT + 1))
NGINX_PORT=$((BASE_PORT + 2))
SLUICE_PORT=$((BASE_PORT + 3))
SLUICE_HTTPS_PORT=$((BASE_PORT + 4))
SLUICE_ADMIN_PORT=$((BASE_PORT + 5))

INSTALL=0
BUILD=0
ONLY=
while (($#)); do
    case $1 in
        --install) INSTALL=1 ;;
        --build) BUILD=1 ;;
        --only) ONLY=${2:-}; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
case $ONLY in "" | sluice | nginx) ;; *) echo "--only takes sluice or nginx" >&2; exit 2 ;; esac

cd "$(dirname "$0")/.."

# --- tools -------------------------------------------------------------------------------
missing=()
for tool in nginx wrk curl; do
    command -v "$tool" > /dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    cmd="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
    if ((INSTALL)); then
        sh -c "$cmd"
    else
        echo "missing: ${missing[*]}. Install with:" >&2
        echo "  $cmd   (or rerun with --install)" >&2
        exit 1
    fi
fi
command -v python3 > /dev/null || { echo "python3 is needed (prober, echo backend)" >&2; exit 1; }
# The interpreter itself, not a version manager's shim, so $! is the real process.
PYTHON=$(python3 -c 'import sys; print(sys.executable)')

SLUICE_BIN=${SLUICE_BIN:-${CARGO_TARGET_DIR:-target}/release/sluice}
if ((BUILD)); then
    cargo build --release --bin sluice
fi
if [[ $ONLY != nginx && ! -x $SLUICE_BIN ]]; then
    echo "no $SLUICE_BIN; set SLUICE_BIN or pass --build" >&2
    exit 1
fi

# --- processes and cleanup ---------------------------------------------------------------
WORK=$(mktemp -d /tmp/sluice-propagation.XXXXXX)
chmod 755 "$WORK" # nginx workers run as nobody when started as root
PIDS=()
stop_pid() { # $1 = pid: TERM, wait up to 5 s, KILL
    kill -TERM "$1" 2> /dev/null || return 0
    for _ in $(seq 50); do
        kill -0 "$1" 2> /dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$1" 2> /dev/null || true
}
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        stop_pid "$pid"
    done
    if [[ ${KEEP_WORK:-0} == 1 ]]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bench_check_ports "$BACKEND_PORT" "$ECHO_PORT" "$NGINX_PORT" "$SLUICE_PORT" "$SLUICE_HTTPS_PORT" "$SLUICE_ADMIN_PORT"

# --- the helper: config generation, upgrade echo backend, change driver + prober ----------
cat > "$WORK/prop.py" << 'PYEOF'
"""Helper for benches/propagation.sh: generate, echo backend, drive changes and probe."""
import base64, hashlib, json, os, socket, socketserver, subprocess, sys, threading, time

BODY = b"hello from backend\n"
# The location block lib.sh's ingress_location renders (the proxy settings compare.sh's nginx
# uses too): its first line opens the block, the Ingress's `set` lines go after it.
LOCATION_OPEN, LOCATION_REST = os.environ["LOCATION"].split("\n", 1)


def app_yaml(i, backend_port, extra_hosts):
    rules = [f"app-{i}.example"] + extra_hosts
    rules_yaml = "".join(
        f"""  - host: {h}
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service:
            name: app-{i}
            port:
              name: http
""" for h in rules)
    return f"""apiVersion: v1
kind: Service
metadata:
  name: app-{i}
  namespace: bench
spec:
  ports:
  - name: http
    port: 80
    targetPort: {backend_port}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: app-{i}-1
  namespace: bench
  labels:
    kubernetes.io/service-name: app-{i}
addressType: IPv4
ports:
- name: http
  port: {backend_port}
endpoints:
- addresses: ["127.0.0.1"]
  conditions:
    ready: true
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: app-{i}
  namespace: bench
spec:
  ingressClassName: nginx
  rules:
{rules_yaml}---
"""


class Config:
    def __init__(self, env):
        self.work = env["WORK"]
        self.n = int(env["INGRESSES"])
        self.per_file = int(env["APPS_PER_FILE"])
        self.backend_port = int(env["BACKEND_PORT"])
        self.nginx_port = int(env["NGINX_PORT"])
        self.manifests = os.path.join(self.work, "manifests")
        self.staging = os.path.join(self.work, "staging")
        self.extra = {}  # app -> [added hosts]

    def file_of(self, i):
        return f"apps-{i // self.per_file:05d}.yaml"

    def render_file(self, first):
        last = min(first + self.per_file, self.n)
        return "".join(app_yaml(i, self.backend_port, self.extra.get(i, []))
                       for i in range(first, last))

    def write_manifests(self):
        for first in range(0, self.n, self.per_file):
            with open(os.path.join(self.manifests, self.file_of(first)), "w") as f:
                f.write(self.render_file(first))

    def render_servers(self):
        out = []
        for i in range(self.n):
            for host in [f"app-{i}.example"] + self.extra.get(i, []):
                out.append(f"""    server {{
        server_name {host};
        listen 127.0.0.1:{self.nginx_port};
{LOCATION_OPEN}
            set $namespace      "bench";
            set $ingress_name   "app-{i}";
            set $service_name   "app-{i}";
            set $service_port   "80";
{LOCATION_REST}
    }}
""")
        return "".join(out)


def probe(port, host):
    """One request on a new connection: (visible, error)."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
        s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        return data.startswith(b"HTTP/1.1 200") and data.endswith(BODY), None
    except OSError as e:
        return False, type(e).__name__


class Upgraded(threading.Thread):
    """A long-lived upgraded connection through the proxy, echoing a line every 200 ms."""

    def __init__(self, port, stop):
        super().__init__(daemon=True)
        self.port, self.stop = port, stop
        self.ok = 0
        self.error = None
        self.established = False

    def run(self):
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            key = base64.b64encode(os.urandom(16)).decode()
            s.sendall((f"GET /ws HTTP/1.1\r\nHost: ws.example\r\nUpgrade: websocket\r\n"
                       f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                       f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = s.recv(4096)
                if not chunk:
                    raise ConnectionError("closed during the handshake")
                head += chunk
            if not head.startswith(b"HTTP/1.1 101"):
                raise ConnectionError("no 101: " + head.split(b"\r\n")[0].decode(errors="replace"))
            self.established = True
            buf = head.split(b"\r\n\r\n", 1)[1]
            n = 0
            while not self.stop.is_set():
                msg = f"ping {n}\n".encode()
                s.sendall(msg)
                while b"\n" not in buf:
                    chunk = s.recv(4096)
                    if not chunk:
                        raise ConnectionError(f"closed after {self.ok} echoes")
                    buf += chunk
                line, buf = buf.split(b"\n", 1)
                if line + b"\n" != msg:
                    raise ConnectionError("wrong echo")
                self.ok += 1
                n += 1
                self.stop.wait(0.2)
            s.close()
        except OSError as e:
            self.error = f"{type(e).__name__}: {e}"


def drive(mode, env):
    cfg = Config(env)
    port = int(env["PORT"])
    changes, interval = int(env["CHANGES"]), float(env["INTERVAL"])
    poll = int(env["POLL_MS"]) / 1000.0
    nginx_args = ["-p", cfg.work, "-e", os.path.join(cfg.work, "proxy.error.log")]
    stop = threading.Event()
    upgraded = [Upgraded(port, stop) for _ in range(int(env["UPGRADED"]))]
    for u in upgraded:
        u.start()
    time.sleep(0.5)
    results = []
    next_at = time.monotonic()
    for c in range(changes):
        now = time.monotonic()
        if now < next_at:
            time.sleep(next_at - now)
        next_at = max(next_at + interval, time.monotonic())
        app = (c * 7919 + 13) % cfg.n
        host = f"chg-{c}.example"
        cfg.extra.setdefault(app, []).append(host)
        was, _ = probe(port, host)
        r = {"change": c, "app": app, "host": host, "visible_before": was, "probe_errors": {}}
        if mode == "sluice":
            name = cfg.file_of(app)
            staged = os.path.join(cfg.staging, name)
            with open(staged, "w") as f:
                f.write(cfg.render_file(app - app % cfg.per_file))
            t0 = time.monotonic()
            os.rename(staged, os.path.join(cfg.manifests, name))
            t_apply = t0
        else:
            staged = os.path.join(cfg.staging, "servers.conf")
            with open(staged, "w") as f:
                f.write(cfg.render_servers())
            t0 = time.monotonic()
            if env["NGINX_TEST"] == "1":
                test = subprocess.run(["nginx", "-t", "-q", "-c",
                                       os.path.join(cfg.staging, "proxy.conf")] + nginx_args,
                                      capture_output=True, text=True)
                r["test_ms"] = (time.monotonic() - t0) * 1000
                if test.returncode != 0:
                    r["error"] = "nginx -t failed: " + test.stderr.strip()[-300:]
                    results.append(r)
                    continue
            os.rename(staged, os.path.join(cfg.work, "servers.conf"))
            t_apply = time.monotonic()
            reload = subprocess.run(["nginx", "-s", "reload", "-c",
                                     os.path.join(cfg.work, "proxy.conf")] + nginx_args,
                                    capture_output=True, text=True)
            if reload.returncode != 0:
                r["error"] = "nginx -s reload failed: " + reload.stderr.strip()[-300:]
        deadline = t0 + 30
        while True:
            seen, err = probe(port, host)
            t = time.monotonic()
            if err:
                r["probe_errors"][err] = r["probe_errors"].get(err, 0) + 1
            if seen:
                r["ms"] = (t - t0) * 1000
                r["apply_ms"] = (t - t_apply) * 1000
                break
            if t > deadline:
                r["ms"] = None
                break
            time.sleep(poll)
        results.append(r)
    time.sleep(1.0)
    lingering = None
    if mode == "nginx":
        # Before the long-lived connections close: workers of earlier generations still alive.
        ps = subprocess.run(["ps", "-o", "rss=,args=", "--ppid", env["NGINX_MASTER"]],
                            capture_output=True, text=True).stdout.splitlines()
        lingering = {"draining": sum(1 for l in ps if "shutting down" in l),
                     "workers": len(ps),
                     "rss_mib": sum(int(l.split()[0]) for l in ps) // 1024}
    stop.set()
    for u in upgraded:
        u.join(timeout=5)
    out = {"changes": results,
           "upgraded": [{"established": u.established, "echoes": u.ok, "error": u.error}
                        for u in upgraded],
           "lingering": lingering}
    json.dump(out, sys.stdout)


class EchoHandler(socketserver.BaseRequestHandler):
    """Answers an Upgrade request with 101, then echoes bytes back until the peer closes."""

    def handle(self):
        s = self.request
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                return
            head += chunk
        key = b""
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"sec-websocket-key:"):
                key = line.split(b":", 1)[1].strip()
        accept = base64.b64encode(hashlib.sha1(
            key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        if b"upgrade: websocket" not in head.lower():
            s.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        rest = head.split(b"\r\n\r\n", 1)[1]
        if rest:
            s.sendall(rest)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return
            s.sendall(chunk)


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    cmd = sys.argv[1]
    env = os.environ
    if cmd == "gen":
        cfg = Config(env)
        os.makedirs(cfg.manifests, exist_ok=True)
        os.makedirs(cfg.staging, exist_ok=True)
        cfg.write_manifests()
        with open(os.path.join(cfg.work, "servers.conf"), "w") as f:
            f.write(cfg.render_servers())
        with open(os.path.join(cfg.work, "hosts.lua"), "w") as f:
            f.write(f"local n = {cfg.n}\nmath.randomseed(os.time())\n"
                    "request = function()\n"
                    "  return wrk.format(\"GET\", \"/\", {Host = \"app-\" .. math.random(0, n - 1) .. \".example\"})\n"
                    "end\n")
    elif cmd == "echo":
        EchoServer(("127.0.0.1", int(sys.argv[2])), EchoHandler).serve_forever()
    elif cmd in ("sluice", "nginx"):
        drive(cmd, env)
    elif cmd == "summary":
        summary(sys.argv[2], sys.argv[3])


def pct(values, p):
    """Nearest-rank percentile."""
    v = sorted(values)
    k = max(0, min(len(v) - 1, -(-len(v) * p // 100) - 1))
    return v[int(k)]


def summary(name, path):
    with open(path) as f:
        d = json.load(f)
    ch = d["changes"]
    seen = [c["ms"] for c in ch if c.get("ms") is not None]
    applied = [c["apply_ms"] for c in ch if c.get("apply_ms") is not None]
    errs = {}
    for c in ch:
        for k, v in c["probe_errors"].items():
            errs[k] = errs.get(k, 0) + v
    up = d["upgraded"]
    fields = {
        "changes": len(ch),
        "visible": len(seen),
        "early": sum(1 for c in ch if c["visible_before"]),
        "p50": pct(seen, 50) if seen else float("nan"),
        "p99": pct(seen, 99) if seen else float("nan"),
        "max": max(seen) if seen else float("nan"),
        "apply_p50": pct(applied, 50) if applied else float("nan"),
        "apply_p99": pct(applied, 99) if applied else float("nan"),
        "test_p50": pct([c["test_ms"] for c in ch if "test_ms" in c], 50) if any("test_ms" in c for c in ch) else float("nan"),
        "probe_errors": sum(errs.values()),
        "probe_error_kinds": ",".join(f"{k}={v}" for k, v in sorted(errs.items())) or "-",
        "up_total": len(up),
        "up_broken": sum(1 for u in up if u["error"] or not u["established"]),
        "up_errors": "; ".join(sorted({u["error"] for u in up if u["error"]})) or "-",
        "errors": "; ".join(c["error"] for c in ch if "error" in c) or "-",
    }
    if d.get("lingering"):
        fields.update({f"lingering_{k}": v for k, v in d["lingering"].items()})
    for k, v in fields.items():
        print(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}")


if __name__ == "__main__":
    main()
PYEOF

# --- configuration: 5 000 Ingresses for both -----------------------------------------------
LOCATION=$(ingress_location)
export WORK INGRESSES APPS_PER_FILE BACKEND_PORT NGINX_PORT CHANGES INTERVAL POLL_MS UPGRADED NGINX_TEST LOCATION
echo "generating $INGRESSES Ingresses ($APPS_PER_FILE per manifest file) and nginx's server list..."
"$PYTHON" "$WORK/prop.py" gen

# The IngressClass, the ConfigMap and the echo backend (lib.sh's Service `backend`), plus the
# Ingress for the upgraded connections.
{
    sluice_base_manifests "$ECHO_PORT"
    cat << EOF
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: ws
  namespace: bench
spec:
  ingressClassName: nginx
  rules:
  - host: ws.example
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service:
            name: backend
            port:
              name: http
EOF
} > "$WORK/manifests/00-base.yaml"

mkdir -p "$WORK/backend-tmp" "$WORK/proxy-tmp"
cat > "$WORK/backend.conf" << EOF
worker_processes 1;
daemon off;
pid $WORK/backend.pid;
error_log $WORK/backend.error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    default_type text/plain;
    client_body_temp_path $WORK/backend-tmp/body;
    proxy_temp_path       $WORK/backend-tmp/proxy;
    fastcgi_temp_path     $WORK/backend-tmp/fastcgi;
    uwsgi_temp_path       $WORK/backend-tmp/uwsgi;
    scgi_temp_path        $WORK/backend-tmp/scgi;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$BACKEND_PORT;
        location / { return 200 "hello from backend\n"; }
    }
}
EOF

# nginx as ingress-nginx renders it (load.sh's settings), one server block per Ingress host,
# all through the one `upstream_balancer` (ingress-nginx picks endpoints in Lua behind it; here
# every Service has the same single endpoint). worker_shutdown_timeout 240s is ingress-nginx's
# default: after a reload the old worker keeps its connections up to that long.
# $1 = the servers file to include.
proxy_conf() {
    cat << EOF
worker_processes 1;
worker_shutdown_timeout 240s;
daemon off;
pid $WORK/proxy.pid;
error_log $WORK/proxy.error.log warn;
events {
    multi_accept on;
    worker_connections 16384;
    use epoll;
}
http {
    access_log off;
    default_type text/html;
    client_body_temp_path $WORK/proxy-tmp/body;
    proxy_temp_path       $WORK/proxy-tmp/proxy;
    fastcgi_temp_path     $WORK/proxy-tmp/fastcgi;
    uwsgi_temp_path       $WORK/proxy-tmp/uwsgi;
    scgi_temp_path        $WORK/proxy-tmp/scgi;
    server_tokens off;
    keepalive_timeout 75s;
    keepalive_requests 1000;
    server_names_hash_max_size 32768;
    server_names_hash_bucket_size 128;
    variables_hash_max_size 2048;
$(ingress_nginx_upstream "$BACKEND_PORT")
    upstream upstream_ws {
        server 127.0.0.1:$ECHO_PORT;
    }
    server {
        server_name _;
        listen 127.0.0.1:$NGINX_PORT default_server reuseport backlog=4096;
        location / { return 404; }
    }
    server {
        server_name ws.example;
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_set_header Host       \$http_host;
            proxy_set_header Upgrade    \$http_upgrade;
            proxy_set_header Connection \$connection_upgrade;
            proxy_read_timeout 60s;
            proxy_http_version 1.1;
            proxy_pass http://upstream_ws;
        }
    }
    include $1;
}
EOF
}
proxy_conf "$WORK/servers.conf" > "$WORK/proxy.conf"
proxy_conf "$WORK/staging/servers.conf" > "$WORK/staging/proxy.conf"

wait_200() { # $1 = url, $2 = what, $3 = Host header
    for _ in $(seq 300); do
        if [[ $(curl -s -o /dev/null -w '%{http_code}' -H "Host: $3" "$1") == 200 ]]; then return 0; fi
        sleep 0.1
    done
    echo "$2 did not answer 200 on $1 (Host: $3); logs in $WORK:" >&2
    tail -n 20 "$WORK"/*.log >&2 || true
    exit 1
}

nginx -p "$WORK" -c "$WORK/backend.conf" -e "$WORK/backend.error.log" &
PIDS+=($!)
"$PYTHON" "$WORK/prop.py" echo "$ECHO_PORT" 2> "$WORK/echo.log" &
PIDS+=($!)
wait_200 "http://127.0.0.1:$BACKEND_PORT/" backend localhost

# wrk's figures: requests, req/s, failed (socket errors + non-2xx/3xx).
wrk_fields() { # $1 = wrk output
    awk '/requests in/ { n = $1 } /^Requests\/sec:/ { r = $2 }
         /Socket errors:/ { gsub(/,/, ""); s = $4 + $6 + $8 + $10; detail = $3 " " $4 " " $5 " " $6 " " $7 " " $8 " " $9 " " $10 }
         /Non-2xx/ { x = $NF }
         END { printf "%d %.0f %d %d %s\n", n, r, s, x, (detail == "" ? "-" : detail) }' "$1"
}

# One proxy under load: wrk over the 5 000 hosts for the whole run, the driver's changes and
# probes in the middle. $1 = sluice | nginx, $2 = port.
run_one() {
    local name=$1 port=$2 secs wrk_pid
    secs=$(awk -v c="$CHANGES" -v i="$INTERVAL" 'BEGIN { printf "%d", c * i + 6 }')
    echo "$name: wrk -t$THREADS -c$CONNECTIONS -d${secs}s over $INGRESSES hosts; $CHANGES changes every ${INTERVAL}s; $UPGRADED upgraded connections"
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${secs}s" --timeout 5s -s "$WORK/hosts.lua" \
        "http://127.0.0.1:$port/" > "$WORK/wrk-$name.txt" 2>&1 &
    wrk_pid=$!
    PIDS+=("$wrk_pid")
    sleep 2
    PORT=$port NGINX_MASTER=${NGINX_PID:-0} "$PYTHON" "$WORK/prop.py" "$name" > "$WORK/drive-$name.json"
    wait "$wrk_pid" || true
}

declare -A RES
collect() { # $1 = name: fills RES[name.key]
    local name=$1 line k v n r s x detail
    while IFS= read -r line; do
        k=${line%%=*}
        v=${line#*=}
        RES[$name.$k]=$v
    done < <("$PYTHON" "$WORK/prop.py" summary "$name" "$WORK/drive-$name.json")
    read -r n r s x detail < <(wrk_fields "$WORK/wrk-$name.txt")
    RES[$name.requests]=$n
    RES[$name.rps]=$r
    RES[$name.failed]=$((s + x))
    RES[$name.socket]=$detail
    RES[$name.non2xx]=$x
}

if [[ $ONLY != nginx ]]; then
    RUST_LOG=${RUST_LOG:-info} "$SLUICE_BIN" \
        --manifests "$WORK/manifests" \
        --configmap bench/sluice \
        --worker-threads 1 \
        --bind-address 127.0.0.1 \
        --http-port "$SLUICE_PORT" \
        --https-port "$SLUICE_HTTPS_PORT" \
        --healthz-host 127.0.0.1 \
        --healthz-port "$SLUICE_ADMIN_PORT" \
        --metrics-port "$SLUICE_ADMIN_PORT" \
        > "$WORK/sluice.out" 2> "$WORK/sluice.log" &
    SLUICE_PID=$!
    PIDS+=("$SLUICE_PID")
    t0=$EPOCHREALTIME
    wait_200 "http://127.0.0.1:$SLUICE_PORT/" sluice "app-$((INGRESSES - 1)).example"
    echo "sluice: first answer with $INGRESSES Ingresses after $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }') s; RSS $(awk '/VmRSS/ { print $2 / 1024 " MiB" }' "/proc/$SLUICE_PID/status")"
    run_one sluice "$SLUICE_PORT"
    collect sluice
    RES[sluice.rss]=$(awk '/VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$SLUICE_PID/status")
    RES[sluice.procs]=1
    # What the publisher reported per change (translate + swap), from its log.
    RES[sluice.publish]=$(grep 'configuration published' "$WORK/sluice.log" | tail -n +2 |
        sed -n 's/.*took_ms=\([0-9]*\).*/\1/p' | sort -n |
        awk '{ a[NR] = $1 } END { if (NR) printf "%d/%d/%d", a[int((NR + 1) / 2)], a[int(NR * 0.99 + 0.99)], a[NR]; else printf "-" }')
    stop_pid "$SLUICE_PID"
fi

if [[ $ONLY != sluice ]]; then
    t0=$EPOCHREALTIME
    nginx -t -q -p "$WORK" -c "$WORK/proxy.conf" -e "$WORK/proxy.error.log"
    echo "nginx: nginx -t with $INGRESSES servers took $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }') s"
    nginx -p "$WORK" -c "$WORK/proxy.conf" -e "$WORK/proxy.error.log" &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
    wait_200 "http://127.0.0.1:$NGINX_PORT/" nginx "app-$((INGRESSES - 1)).example"
    run_one nginx "$NGINX_PORT"
    collect nginx
    # Old workers still draining connections after their reload (worker_shutdown_timeout).
    mapfile -t kids < <(ps -o pid= --ppid "$NGINX_PID")
    rss=0
    for pid in "$NGINX_PID" "${kids[@]}"; do
        rss=$((rss + $(awk '/VmRSS/ { print $2 }' "/proc/$pid/status" 2> /dev/null || echo 0)))
    done
    RES[nginx.rss]=$((rss / 1024))
    RES[nginx.procs]=$((1 + ${#kids[@]}))
    RES[nginx.draining]=$(ps -o args= --ppid "$NGINX_PID" | grep -c 'shutting down' || true)
    RES[nginx.publish]=-
fi

# --- report ------------------------------------------------------------------------------
echo
echo "$INGRESSES Ingresses, $CHANGES changes every ${INTERVAL}s, probe every ${POLL_MS} ms on a new connection;"
echo "load: wrk -t$THREADS -c$CONNECTIONS keep-alive over all hosts; $UPGRADED upgraded connections echoing every 200 ms; $(nproc) CPUs"
printf '\n%-7s %8s %8s %8s %8s %8s %9s %9s %7s %9s %8s %6s\n' proxy visible "p50 ms" "p99 ms" "max ms" \
    "apply p50" "apply p99" "wrk req/s" failed "upgraded" "RSS MiB" procs
for name in sluice nginx; do
    [[ -n ${RES[$name.changes]:-} ]] || continue
    printf '%-7s %4s/%-3s %8s %8s %8s %9s %9s %9s %7s %6s/%-2s %8s %6s\n' "$name" \
        "${RES[$name.visible]}" "${RES[$name.changes]}" "${RES[$name.p50]}" "${RES[$name.p99]}" \
        "${RES[$name.max]}" "${RES[$name.apply_p50]}" "${RES[$name.apply_p99]}" "${RES[$name.rps]}" \
        "${RES[$name.failed]}" "$((RES[$name.up_total] - RES[$name.up_broken]))" "${RES[$name.up_total]}" \
        "${RES[$name.rss]}" "${RES[$name.procs]}"
done
echo
for name in sluice nginx; do
    [[ -n ${RES[$name.changes]:-} ]] || continue
    echo "$name: wrk ${RES[$name.requests]} requests, non-2xx ${RES[$name.non2xx]}, socket errors: ${RES[$name.socket]};" \
        "probe connection errors ${RES[$name.probe_errors]} (${RES[$name.probe_error_kinds]});" \
        "visible before the change: ${RES[$name.early]}"
    echo "  upgraded connections broken: ${RES[$name.up_broken]} (${RES[$name.up_errors]}); driver errors: ${RES[$name.errors]}"
    if [[ $name == sluice ]]; then
        echo "  publisher's took_ms per change (p50/p99/max, from its log): ${RES[sluice.publish]}"
    else
        echo "  nginx -t per change (p50): ${RES[nginx.test_p50]} ms; before the upgraded connections closed:" \
            "${RES[nginx.lingering_workers]} workers, ${RES[nginx.lingering_draining]} of them old ones still" \
            "shutting down (holding those connections), ${RES[nginx.lingering_rss_mib]} MiB RSS together;" \
            "after: ${RES[nginx.draining]} shutting down"
    fi
done
echo
echo "visible: changes seen within 30 s; p50/p99/max: from the change (Sluice: rename into the"
echo "watched folder; nginx: start of nginx -t) to the first probe answering 200 from the new host."
echo "apply: from the rename (Sluice) or the reload signal (nginx) to visible. failed: wrk socket"
echo "errors + non-2xx. p99 is nearest-rank: with fewer than 100 changes it is the maximum."
