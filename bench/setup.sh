# Shared by bench/run.sh and bench/compare.sh (sourced, not run): installs
# what is missing (nginx, wrk from Debian; oha from crates.io unless OHA=0),
# makes a work folder $W removed on exit with everything in PIDS stopped,
# an nginx stub over TLS answering 204 on $STUB (config only; the caller
# starts it), the IdP key for $ALG, the HMAC key, the secrets file, and
# gateway_conf to write a gateway config. Loopback only.
need() { command -v "$1" >/dev/null 2>&1; }
if ! need nginx || ! need wrk; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk >/dev/null
fi
OHA_BIN=$(command -v oha || true)
[ -z "$OHA_BIN" ] && [ -x "$PWD/target/bench-tools/bin/oha" ] && OHA_BIN="$PWD/target/bench-tools/bin/oha"
if [ "$OHA" = 1 ] && [ -z "$OHA_BIN" ]; then
  cargo install oha --locked --root "$PWD/target/bench-tools" >/dev/null 2>&1 && OHA_BIN="$PWD/target/bench-tools/bin/oha" || OHA_BIN=""
fi
[ "$OHA" = 1 ] || OHA_BIN=""   # --no-oha: no open loop, even when oha is there

W=$(mktemp -d /tmp/bgw-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

# CPU time of processes, in clock ticks of HZ a second: user + system,
# summed over every PID given; and system alone, of one.
HZ=$(getconf CLK_TCK)
cpu_ticks() { local n=0 p; for p in "$@"; do n=$((n + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$n"; }
sys_ticks() { awk '{print $15}' "/proc/$1/stat"; }

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Waits until 127.0.0.1:PORT accepts, up to TRIES x 0.1 s (default 300).
wait_port() { for _ in $(seq "${2:-300}"); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
STUB=$(port)

# --- TLS for the stub ------------------------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=bench CA" -keyout "$W/ca.key" -out "$W/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
  -keyout "$W/stub.key" -out "$W/stub.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' > "$W/san.ext"
openssl x509 -req -in "$W/stub.csr" -CA "$W/ca.pem" -CAkey "$W/ca.key" -CAcreateserial \
  -days 2 -extfile "$W/san.ext" -out "$W/stub.pem" 2>/dev/null

REST_KEY="rk_bench_$(openssl rand -hex 16)"
PROJECT_KEY="project_0123456789abcdefghijklmnopqrstuv"

nginx_conf() { # name body
  mkdir -p "$W/$1"
  cat > "$W/$1/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $W/$1/nginx.pid;
error_log $W/$1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $W/$1/body;
  proxy_temp_path $W/$1/proxy;
  fastcgi_temp_path $W/$1/fastcgi;
  uwsgi_temp_path $W/$1/uwsgi;
  scgi_temp_path $W/$1/scgi;
  $2
}
CONF
}
nginx_conf stub "server {
    listen 127.0.0.1:$STUB ssl;
    ssl_certificate $W/stub.pem;
    ssl_certificate_key $W/stub.key;
    keepalive_requests 1000000;
    # 204 only when the proxy in front injected the REST key and the
    # project key: every measured answer shows the upstream got them.
    location = /2.8/campaigns/delete {
      if (\$http_authorization != \"Bearer $REST_KEY\") { return 401; }
      if (\$http_x_batch_project != \"$PROJECT_KEY\") { return 400; }
      return 204;
    }
  }"
# nginx as the reverse proxy an operator would put in front of Batch:
# injects the two keys, TLS keep-alive upstream to the stub (no token
# check, no audit). Config only, under $W/proxy, listening on PORT.
nginx_proxy_conf() { # port
nginx_conf proxy "upstream stub { server 127.0.0.1:$STUB; keepalive 64; }
  server {
    listen 127.0.0.1:$1;
    keepalive_requests 1000000;
    location / {
      proxy_pass https://stub;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header Authorization \"Bearer $REST_KEY\";
      proxy_set_header X-Batch-Project \"$PROJECT_KEY\";
      proxy_ssl_trusted_certificate $W/ca.pem;
      proxy_ssl_verify on;
      proxy_ssl_name 127.0.0.1;
      proxy_ssl_session_reuse on;
    }
  }"
}
# --- the gateway -------------------------------------------------------------
case "$ALG" in
  EdDSA) openssl genpkey -algorithm ed25519 -out "$W/idp.key" 2>/dev/null;;
  ES256) openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$W/idp.key" 2>/dev/null;;
  RS256) openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$W/idp.key" 2>/dev/null;;
esac
openssl pkey -in "$W/idp.key" -pubout -out "$W/idp.pub.pem" 2>/dev/null
openssl rand -hex 32 | tr -d '\n' > "$W/hmac.key"
printf '["batch/bench"]\nrest_key = "%s"\nproject_key = "%s"\n' "$REST_KEY" "$PROJECT_KEY" > "$W/secrets.toml"
chmod 600 "$W/hmac.key" "$W/secrets.toml" "$W/idp.key"
gateway_conf() { # file listen-port admin-port audit-folder
  cat > "$1" <<CONF
[server]
listen = "127.0.0.1:$2"
admin_listen = "127.0.0.1:$3"
max_concurrent_requests = 4096
[upstream]
base_url = "https://127.0.0.1:$STUB"
ca_file = "ca.pem"
[auth]
audiences = ["batch-gateway"]
max_token_lifetime_s = 3600
[[auth.issuers]]
issuer = "https://idp.bench"
algorithms = ["$ALG"]
public_keys = ["idp.pub.pem"]
[secrets]
file = "secrets.toml"
[log]
level = "warn"
[audit]
file = "$4/audit.jsonl"
hmac_key_file = "hmac.key"
rotate_bytes = 1073741824
[[projects]]
alias = "bench"
secret_path = "batch/bench"
[[teams]]
name = "bench"
[[teams.grants]]
project = "bench"
actions = ["campaigns.delete"]
CONF
}
BODY='{"id":"orchestration_0664hyh918hr1gnzka9py5t62nrc0e1f"}'
printf '%s' "$BODY" > "$W/body.json"
# wrk's script for the reusable token: call once $TOKEN is minted.
post_lua() {
  cat > "$W/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '$BODY'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $TOKEN"
LUA
}
