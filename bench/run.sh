#!/usr/bin/env bash
# Load benchmark, side by side in ONE run, interleaved and repeated:
#   (a) direct    — wrk -> nginx stub over TLS answering 204
#   (b) nginx     — wrk -> nginx reverse proxy (injects Authorization and
#                   X-Batch-Project) -> the stub over TLS, keep-alive
#   (b') haproxy  — wrk -> HAProxy verifying the caller's JWT itself
#                   (http_auth_bearer, jwt_header_query, jwt_payload_query,
#                   jwt_verify: alg pinned, signature, exp, aud, iss, a team
#                   ACL), then Authorization replaced and X-Batch-Project
#                   added -> the stub over TLS, keep-alive (no durable audit;
#                   HAProxy 2.6 verifies ES256 and RS256, not EdDSA: with
#                   --alg EdDSA this row is left out)
#   (c) gateway   — wrk -> batch-gateway (the same algorithm, file secrets,
#                   audit on a real file with fsync) -> the stub over TLS
#   (c'') tmpfs    — as (c), a third gateway whose trail is on tmpfs (/dev/shm:
#                   fsync returns at once, nothing reaches a disk): the
#                   difference to (c) is what the disk costs, the rest of the
#                   difference to nginx is the gateway's own work
#   (c') shared    — as (c), a second gateway with [shared_state] on a local
#                   redis-server (pinned with the stub): a grant without limits
#                   (the cool-down check only) and one with rate_per_minute and
#                   daily_quota (the whole admission script), interleaved with
#                   the others: what the Redis round trip adds
#   (d) single-use — as (c), but every request carries a fresh request-bound
#                   token (a signature check each time); closed loop only,
#                   after the interleaved reps (its replay memory grows, so
#                   RSS is read before and after it), interleaved with
#                   HAProxy given the same fresh tokens (haproxy-fresh) and
#                   the gateway given one reusable token through the same
#                   wrk script (gateway-lua), so that the load generator's
#                   work per request is the same in the three; then the
#                   same fresh and reusable tokens paced (wrk's delay(), a
#                   random 0-16 ms wait before each request: ~4 000 req/s,
#                   neither saturated) so that the two are compared at one rate
# The stub answers 204 only to requests carrying the injected REST key and
# project key, so every 2xx counted shows the upstream got them. Before
# measuring, a pre-flight sends HAProxy and the gateway a valid token, then
# a tampered, an `alg: none`, an expired, a wrong-audience and a wrong-team
# one: the run stops unless both pass the first and refuse the others.
# Then, same run and disk: one fsync per audit record vs grouped fsync, and
# the disk's own fsync latency (benches/audit_fsync.rs).
# Closed loop: wrk -t2 -c32. Open loop: oha at fixed rates (latency
# corrected), when oha is installed. Proxies are pinned to CPU 0, the load
# generator and the stub to CPU 1. Every answer is checked: non-2xx counted.
#
#   bench/run.sh [--reps 3] [--secs 10] [--alg ES256|RS256|EdDSA] [--no-oha]
#
# Installs nginx, wrk and haproxy from Debian when missing; oha from crates.io when
# missing (cargo install; optional: --no-oha skips the open loop). Stops
# everything it started, by PID. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=3 SECS=10 OHA=1 ALG=ES256
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) REPS=$2; shift 2;;
    --secs) SECS=$2; shift 2;;
    --no-oha) OHA=0; shift;;
    --alg) ALG=$2; shift 2;;
    *) echo "unknown argument $1" >&2; exit 2;;
  esac
done
case "$ALG" in EdDSA|ES256|RS256) ;; *) echo "--alg: EdDSA, ES256 or RS256" >&2; exit 2;; esac

source "$(dirname "$0")/setup.sh"
cargo build --release --locked --quiet
GW="$PWD/target/release/batch-gateway"
NGX=$(port); GWP=$(port); GWA=$(port)
nginx_proxy_conf "$NGX"

HAP=""
if [ "$ALG" != EdDSA ]; then
  if ! need haproxy; then
    apt-get install -y -qq haproxy >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq haproxy >/dev/null; }
  fi
  HAP=$(port)
  # What an operator would configure instead of the gateway: the caller's
  # JWT checked by HAProxy itself on every request, the keys injected.
  cat > "$W/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 8192
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend jwt
  bind 127.0.0.1:$HAP
  http-request deny deny_status 401 unless { req.hdr(authorization) -m found }
  http-request set-var(txn.alg) http_auth_bearer,jwt_header_query('\$.alg')
  http-request set-var(txn.iss) http_auth_bearer,jwt_payload_query('\$.iss')
  http-request set-var(txn.aud) http_auth_bearer,jwt_payload_query('\$.aud')
  http-request set-var(txn.exp) http_auth_bearer,jwt_payload_query('\$.exp','int')
  http-request set-var(txn.team) http_auth_bearer,jwt_payload_query('\$.team')
  http-request deny deny_status 401 unless { var(txn.alg) -m str $ALG }
  http-request deny deny_status 401 unless { http_auth_bearer,jwt_verify(txn.alg,"$W/idp.pub.pem") -m int 1 }
  http-request deny deny_status 401 unless { var(txn.iss) -m str https://idp.bench }
  http-request deny deny_status 401 unless { var(txn.aud) -m str batch-gateway }
  http-request set-var(txn.now) date()
  http-request deny deny_status 401 if { var(txn.exp),sub(txn.now) -m int lt 0 }
  http-request deny deny_status 403 unless { var(txn.team) -m str bench }
  http-request set-header Authorization "Bearer $REST_KEY"
  http-request set-header X-Batch-Project "$PROJECT_KEY"
  default_backend batch
backend batch
  http-reuse always
  server stub 127.0.0.1:$STUB ssl verify required ca-file $W/ca.pem verifyhost 127.0.0.1
CONF
  haproxy -c -q -f "$W/haproxy.cfg" || { echo "FAILED: haproxy refuses its configuration" >&2; exit 1; }
fi

gateway_conf "$W/gateway.toml" "$GWP" "$GWA" audit
# Caller tokens from the bench IdP; arguments add to or override these.
mint() { "$GW" token mint --alg "$ALG" --key "$W/idp.key" --iss https://idp.bench --sub bench "$@"; }
TOKEN=$(mint --team bench --ttl-s 3500)
# The shared-state gateway: same config, its own trail, a second team whose
# grant has limits (too high to refuse anything), and Redis.
if ! command -v redis-server >/dev/null; then
  apt-get install -y -qq redis-server >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
fi
RP=$(port); SGWP=$(port); SGWA=$(port)
gateway_conf "$W/gateway-shared.toml" "$SGWP" "$SGWA" audit-shared
cat >> "$W/gateway-shared.toml" <<CONF
[[teams]]
name = "benchlim"
[[teams.grants]]
project = "bench"
actions = ["campaigns.delete"]
rate_per_minute = 1000000000
daily_quota = 1000000000000
[shared_state]
backend = "redis"
url = "redis://127.0.0.1:$RP"
key_prefix = "bench:"
CONF
TOKEN_LIM=$(mint --team benchlim --ttl-s 3500)
# The trail on tmpfs, when this machine has one: the disk's part. It lives
# in memory for the run (~1 GB at --reps 3 --secs 8) and is removed after.
TGWP=""
if [ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ]; then
  SHM=$(mktemp -d /dev/shm/bgw-trail.XXXXXX)
  trap 'cleanup; rm -rf "$SHM"' EXIT
  TGWP=$(port); TGWA=$(port)
  gateway_conf "$W/gateway-tmpfs.toml" "$TGWP" "$TGWA" "$SHM"
fi
# Single-use tokens: bound to this exact request, each with its own jti;
# minted per repetition, more than the run can use (a reused one would be
# refused as a replay and counted as non-2xx).
mint_single() { # count file
  mint --team bench --ttl-s 3500 --bind POST /2.8/campaigns/delete "$W/body.json" --count "$1" > "$2"
}

taskset -c 1 nginx -c "$W/stub/nginx.conf" & PIDS+=($!)
taskset -c 0 nginx -c "$W/proxy/nginx.conf" & PIDS+=($!)
taskset -c 0 "$GW" serve --config "$W/gateway.toml" 2>"$W/gateway.log" & GW_PID=$!; PIDS+=($GW_PID)
if [ -n "$HAP" ]; then taskset -c 0 haproxy -db -f "$W/haproxy.cfg" >"$W/haproxy.log" 2>&1 & HAP_PID=$!; PIDS+=($HAP_PID); fi
taskset -c 1 redis-server --bind 127.0.0.1 --port "$RP" --save '' --appendonly no --dir "$W" >/dev/null & REDIS_PID=$!; PIDS+=($REDIS_PID)
wait_port "$RP" 100 || true
taskset -c 0 "$GW" serve --config "$W/gateway-shared.toml" 2>"$W/gateway-shared.log" & SGW_PID=$!; PIDS+=($SGW_PID)
TGW_PID=""
if [ -n "$TGWP" ]; then taskset -c 0 "$GW" serve --config "$W/gateway-tmpfs.toml" 2>"$W/gateway-tmpfs.log" & TGW_PID=$!; PIDS+=($TGW_PID); fi
for p in $STUB $NGX $GWP $SGWP $HAP $TGWP; do wait_port "$p" 100 || true; done
NGX_WORKER=$(pgrep -P "$(cat "$W/proxy/nginx.pid")" | head -1)

post_lua
sed "s/Bearer $TOKEN/Bearer $TOKEN_LIM/" "$W/post.lua" > "$W/post-lim.lua"
# The stub directly: with the keys a proxy would inject.
sed "s/Bearer $TOKEN/Bearer $REST_KEY/" "$W/post.lua" > "$W/direct.lua"
echo "wrk.headers[\"X-Batch-Project\"] = \"$PROJECT_KEY\"" >> "$W/direct.lua"

# --- pre-flight: both token-checking proxies pass a valid token (and the
# stub sees the injected keys: it answers 204 to nothing else) and refuse
# the forgeries; the stub refuses a request without the keys.
NOW_S=$(date +%s)
# A token with one payload claim changed after signing.
tamper() { python3 -c '
import base64, json, sys
h, p, s = sys.argv[1].split(".")
d = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
d["team"] = "admin"
p = base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
print(f"{h}.{p}.{s}")' "$1"; }
# The same claims under `alg: none`, unsigned.
alg_none() { python3 -c '
import base64, sys
h = base64.urlsafe_b64encode(b"{\"alg\":\"none\",\"typ\":\"JWT\"}").rstrip(b"=").decode()
print(h + "." + sys.argv[1].split(".")[1] + ".")' "$1"; }
declare -A FORGED=(
  [tampered]=$(tamper "$TOKEN")
  [alg-none]=$(alg_none "$TOKEN")
  [expired]=$(mint --team bench --claim exp=$((NOW_S - 120)) --claim iat=$((NOW_S - 420)))
  [wrong-audience]=$(mint --team bench --aud someone-else)
  [wrong-team]=$(mint --team other)
)
status() { # url token -> HTTP status
  curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
    -H "Authorization: Bearer $2" --data "$BODY" "$1"
}
PREFLIGHT_OK=1
preflight() { # name url
  local got; got=$(status "$2" "$TOKEN")
  local line="pre-flight $1: valid $got"
  [ "$got" = 204 ] || PREFLIGHT_OK=0
  for f in tampered alg-none expired wrong-audience wrong-team; do
    got=$(status "$2" "${FORGED[$f]}")
    line+=", $f $got"
    case "$got" in 401|403) ;; *) PREFLIGHT_OK=0;; esac
  done
  echo "$line"
}
echo "# pre-flight (valid must be 204, the stub having seen the injected keys; each forgery 401 or 403)"
[ -n "$HAP" ] && preflight haproxy "http://127.0.0.1:$HAP/2.8/campaigns/delete"
preflight gateway "http://127.0.0.1:$GWP/2.8/campaigns/delete"
NOKEY=$(curl -sk -o /dev/null -w '%{http_code}' -X POST --data "$BODY" "https://127.0.0.1:$STUB/2.8/campaigns/delete")
echo "pre-flight stub without the injected keys: $NOKEY"
[ "$NOKEY" = 401 ] || PREFLIGHT_OK=0
[ "$PREFLIGHT_OK" = 1 ] || { echo "FAILED: the pre-flight above; nothing measured" >&2; exit 1; }

# Each wrk thread takes every other token of the file given after "--".
cat > "$W/single.lua" <<LUA
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
local tokens, i = {}, 0
function init(args)
  for line in io.lines(args[1]) do tokens[#tokens + 1] = line end
  i = tid + 1
end
function request()
  local t = tokens[i] or "exhausted"
  i = i + 2
  return wrk.format("POST", nil, {["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. t}, '$BODY')
end
LUA
# The same, paced: each connection waits 0-16 ms (8 on average) before each
# request, so that 32 connections offer ~4 000 req/s whatever the token
# costs. The wait is random, seeded per thread: a fixed one keeps the
# connections in step, and their requests then arrive as bursts of 32.
cat "$W/single.lua" - > "$W/paced.lua" <<'LUA'
local seeded = false
function delay()
  if not seeded then math.randomseed(os.time() + tid * 7919); seeded = true end
  return math.random(0, 16)
end
LUA

PERF_SYNCS=""
command -v perf >/dev/null && perf stat -e syscalls:sys_enter_fdatasync true >/dev/null 2>&1 && PERF_SYNCS=1

# target name -> URL, the proxy PID to account CPU to (none for direct)
declare -A URL=( [direct]="https://127.0.0.1:$STUB/2.8/campaigns/delete"
                 [nginx]="http://127.0.0.1:$NGX/2.8/campaigns/delete"
                 [gateway]="http://127.0.0.1:$GWP/2.8/campaigns/delete"
                 [single]="http://127.0.0.1:$GWP/2.8/campaigns/delete"
                 [gateway-lua]="http://127.0.0.1:$GWP/2.8/campaigns/delete"
                 [single-paced]="http://127.0.0.1:$GWP/2.8/campaigns/delete"
                 [gateway-lua-paced]="http://127.0.0.1:$GWP/2.8/campaigns/delete"
                 [gateway-tmpfs]="http://127.0.0.1:$TGWP/2.8/campaigns/delete"
                 [haproxy]="http://127.0.0.1:$HAP/2.8/campaigns/delete"
                 [haproxy-fresh]="http://127.0.0.1:$HAP/2.8/campaigns/delete"
                 [shared]="http://127.0.0.1:$SGWP/2.8/campaigns/delete"
                 [shared+lim]="http://127.0.0.1:$SGWP/2.8/campaigns/delete" )
declare -A PID=( [direct]="" [nginx]="$NGX_WORKER" [gateway]="$GW_PID" [single]="$GW_PID"
                 [gateway-lua]="$GW_PID" [haproxy]="${HAP_PID:-}" [haproxy-fresh]="${HAP_PID:-}"
                 [shared]="$SGW_PID" [shared+lim]="$SGW_PID" [gateway-tmpfs]="$TGW_PID"
                 [single-paced]="$GW_PID" [gateway-lua-paced]="$GW_PID" )
declare -A AUTH=( [shared+lim]="$TOKEN_LIM" )

RESULTS="$W/results.tsv"
: > "$RESULTS"
closed() { # target rep
  local t=$1 pid=${PID[$1]} before=0 after=0
  local prof=""
  if [ "${PROFILE:-0}" = 1 ] && [ "$t" = gateway ] && [ "$2" = "$REPS" ]; then
    # Software clock sampling (hardware counters may be unavailable here).
    perf record -q -F 499 -e cpu-clock -g -p "$pid" -o "$W/perf.data" -- sleep "$SECS" >/dev/null 2>&1 &
    prof=$!
  fi
  local script=("$W/post.lua") extra=()
  [ "$t" = shared+lim ] && script=("$W/post-lim.lua")
  [ "$t" = direct ] && script=("$W/direct.lua")
  local redis_before; redis_before=$(cpu_ticks "$REDIS_PID")
  if [ "$t" = single ] || [ "$t" = haproxy-fresh ]; then
    # Fresh tokens, enough for the rate the last repetition of this target
    # measured, doubled (12 000 and 20 000 a second to start with); an
    # exhausted file shows as 401s and fails the run below.
    local per_s=${LAST_RATE[$t]:-12000}
    [ "$t" = haproxy-fresh ] && [ -z "${LAST_RATE[$t]:-}" ] && per_s=20000
    mint_single "$((SECS * per_s))" "$W/$t-$2.txt"
    script=("$W/single.lua"); extra=(-- "$W/$t-$2.txt")
  elif [ "$t" = single-paced ]; then
    # Paced at ~4 000 req/s at most: 8 000 a second is plenty.
    mint_single "$((SECS * 8000))" "$W/$t-$2.txt"
    script=("$W/paced.lua"); extra=(-- "$W/$t-$2.txt")
  elif [ "$t" = gateway-lua ] || [ "$t" = gateway-lua-paced ]; then
    # One reusable token, read per request by the same script.
    { yes "$TOKEN" || true; } | head -n "$((SECS * 60000))" > "$W/reusable.txt"
    script=("$W/single.lua"); extra=(-- "$W/reusable.txt")
    [ "$t" = gateway-lua-paced ] && script=("$W/paced.lua")
  fi
  [ -n "$pid" ] && before=$(cpu_ticks "$pid")
  local sys_before=0; [ -n "$pid" ] && sys_before=$(sys_ticks "$pid")
  # The gateways' fdatasyncs, counted by perf's syscall tracepoint (when
  # this machine has it): how many requests shared one.
  local syncs=""
  if [ -n "$PERF_SYNCS" ] && [[ "$pid" = "$GW_PID" || "$pid" = "$SGW_PID" || "$pid" = "$TGW_PID" ]]; then
    perf stat -x, -e syscalls:sys_enter_fdatasync -p "$pid" -o "$W/syncs.txt" -- sleep "$SECS" >/dev/null 2>&1 &
    syncs=$!
  fi
  local out; out=$(taskset -c 1 wrk -t2 -c32 -d"${SECS}s" --latency -s "${script[0]}" "${URL[$t]}" "${extra[@]}")
  [ -n "$prof" ] && wait "$prof" || true
  [ -n "$pid" ] && after=$(cpu_ticks "$pid")
  local sys_after=0; [ -n "$pid" ] && sys_after=$(sys_ticks "$pid")
  local per_sync="-"
  if [ -n "$syncs" ]; then
    wait "$syncs" || true
    per_sync=$(awk -F, '/fdatasync/ {print $1}' "$W/syncs.txt")
  fi
  local reqs rps p50 p99 non2xx
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  non2xx=$(echo "$out" | awk '/Non-2xx/ {print $5}'); non2xx=${non2xx:-0}
  # Requests that got no answer at all count as failures too (wrk prints
  # this line only when there were some).
  local sockerr; sockerr=$(echo "$out" | awk -F'[ ,]+' '/Socket errors/ {print $5+$7+$9+$11}')
  non2xx=$((non2xx + ${sockerr:-0}))
  local cpu_us="-"
  [ -n "$pid" ] && cpu_us=$(python3 -c "print(round(($after-$before)/$HZ*1e6/max($reqs,1),1))")
  local redis_us; redis_us=$(python3 -c "print(round(($(cpu_ticks "$REDIS_PID")-$redis_before)/$HZ*1e6/max($reqs,1),1))")
  local sys_us="-"
  [ -n "$pid" ] && sys_us=$(python3 -c "print(round(($sys_after-$sys_before)/$HZ*1e6/max($reqs,1),1))")
  [ "$per_sync" != "-" ] && per_sync=$(python3 -c "print(round($reqs/max(int('${per_sync:-0}' or 0),1),1))")
  printf 'closed\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$2" "$rps" "$p50" "$p99" "$cpu_us" "$non2xx" "$redis_us" "$sys_us" "$per_sync" >> "$RESULTS"
  # A single-use run that ran out of tokens measures fast 401s, not the
  # gateway: say so loudly and make the whole run fail.
  if [ "$non2xx" -gt 0 ] && [[ "$t" =~ ^(single|haproxy-fresh|gateway-lua|single-paced|gateway-lua-paced)$ ]]; then
    echo "FAILED: $t rep $2: $non2xx of $reqs answers were not 2xx (tokens exhausted at $rps req/s?); its figures are not the proxy's" >&2
    SINGLE_FAILED=1
  fi
  LAST_RATE[$t]=$(python3 -c "print(int(float('$rps') * 2) + 1000)")
}
SINGLE_FAILED=0
declare -A LAST_RATE=()
opened() { # target rate rep
  [ -n "$OHA_BIN" ] || return 0
  local auth=(-H "Authorization: Bearer ${AUTH[$1]:-$TOKEN}")
  [ "$1" = direct ] && auth=(-H "Authorization: Bearer $REST_KEY" -H "X-Batch-Project: $PROJECT_KEY")
  local out; out=$(taskset -c 1 "$OHA_BIN" --no-tui -z "${SECS}s" -w -q "$2" --latency-correction -c 32 \
      -m POST -H "Content-Type: application/json" "${auth[@]}" -d "$BODY" \
      --insecure --output-format json "${URL[$1]}")
  echo "$out" | python3 -c "
import json,sys
d=json.load(sys.stdin); p=d['latencyPercentiles']; codes=d.get('statusCodeDistribution',{})
bad=sum(v for k,v in codes.items() if not k.startswith('2'))+sum(d.get('errorDistribution',{}).values())
print('\t'.join(['open@$2','$1','$3',str(round(d['summary']['requestsPerSec'])),str(round(p['p50']*1e3,3))+'ms',str(round(p['p99']*1e3,3))+'ms',str(round(p['p99.9']*1e3,3))+'ms',str(bad)]))" >> "$RESULTS"
}

echo "# pinning: proxies (nginx worker, gateway) on CPU 0; wrk/oha and the stub on CPU 1"
echo "# caller tokens: $ALG"
echo "# redis-server (shared state) on CPU 1 with the load generator and the stub"
TARGETS="direct nginx gateway shared shared+lim"
[ -n "$HAP" ] && TARGETS="direct nginx haproxy gateway shared shared+lim"
[ -n "$TGWP" ] && TARGETS+=" gateway-tmpfs"
echo "# $REPS reps x ${SECS}s, interleaved: $TARGETS"
for rep in $(seq "$REPS"); do
  for t in $TARGETS; do closed "$t" "$rep"; done
  for rate in 1000 5000; do for t in $TARGETS; do opened "$t" "$rate" "$rep"; done; done
done
# One request at a time (wrk -t1 -c1): what one request waits, without
# queueing, so that the Redis round trip's share of p50 and p99 shows.
serial() { # target rep
  local script="$W/post.lua"; [ "$1" = shared+lim ] && script="$W/post-lim.lua"
  local out; out=$(taskset -c 1 wrk -t1 -c1 -d"${SECS}s" --latency -s "$script" "${URL[$1]}")
  printf 'serial\t%s\t%s\t%s\t%s\n' "$1" "$2" \
    "$(echo "$out" | awk '$1=="50%" {print $2}')" "$(echo "$out" | awk '$1=="99%" {print $2}')" >> "$RESULTS"
}
echo "# one request at a time: gateway, shared, shared+lim, interleaved"
for rep in $(seq "$REPS"); do for t in gateway shared shared+lim; do serial "$t" "$rep"; done; done
RSS_KB=$(awk '/VmHWM/ {print $2}' "/proc/$GW_PID/status")
RSS_NOW_KB=$(awk '/VmRSS/ {print $2}' "/proc/$GW_PID/status")
FRESH="single gateway-lua"; [ -n "$HAP" ] && FRESH="single haproxy-fresh gateway-lua"
FRESH+=" single-paced gateway-lua-paced"
echo "# fresh tokens, $REPS reps x ${SECS}s, interleaved: $FRESH"
for rep in $(seq "$REPS"); do for t in $FRESH; do closed "$t" "$rep"; done; done
RSS_SINGLE_KB=$(awk '/VmHWM/ {print $2}' "/proc/$GW_PID/status")
RSS_SINGLE_NOW_KB=$(awk '/VmRSS/ {print $2}' "/proc/$GW_PID/status")
# Every single-use 2xx spent one jti, still remembered (their tokens live
# for an hour): the replay memory's resident cost per remembered jti.
SPENT=$(cat "$W"/audit/audit.jsonl* | grep '"single_use":true' | grep -c '"phase":"attempt"' || true)
NGX_RSS_KB=$(awk '/VmHWM/ {print $2}' "/proc/$NGX_WORKER/status")

python3 - "$RESULTS" "$RSS_KB" "$NGX_RSS_KB" "$RSS_SINGLE_KB" "$W/summary.json" "$RSS_NOW_KB" "$RSS_SINGLE_NOW_KB" "$SPENT" <<'PY'
import json, statistics, sys
rows=[l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
def ms(v):
    v=v.strip()
    for unit,f in (("us",1e-3),("ms",1),("s",1e3)):
        if v.endswith(unit): return float(v[:-len(unit)])*f
    return float(v)
print("\nclosed loop (wrk -t2 -c32): median [min-max] of the reps")
print(f"{'target':17} {'req/s':>24} {'p50 ms':>8} {'p99 ms':>8} {'proxy CPU us/req':>17} {'of it system':>13} {'non-2xx':>8} {'req/fsync':>10}")
med={}
cpu_med={}
sys_med={}
serial=[x for x in rows if x[0]=="serial"]
rows=[x for x in rows if x[0]!="serial"]
summary={"non2xx": sum(int(x[7]) for x in rows), "rss_mib": int(sys.argv[2])/1024, "open_p99_ms": {}}
p99_med={}
for t in ("direct","nginx","haproxy","gateway","gateway-tmpfs","shared","shared+lim","single","haproxy-fresh","gateway-lua","single-paced","gateway-lua-paced"):
    r=[x for x in rows if x[0]=="closed" and x[1]==t]
    if not r: continue
    rps=[float(x[3]) for x in r]; cpu=[float(x[6]) for x in r if x[6]!="-"]
    med[t]=statistics.median(rps)
    p99_med[t]=statistics.median([ms(x[5]) for x in r])
    if cpu: cpu_med[t]=statistics.median(cpu)
    sysl=[float(x[9]) for x in r if len(x) > 9 and x[9] != "-"]
    syn=[float(x[10]) for x in r if len(x) > 10 and x[10] != "-"]
    if sysl: sys_med[t]=statistics.median(sysl)
    print(f"{t:17} {statistics.median(rps):>10.0f} [{min(rps):.0f}-{max(rps):.0f}] "
          f"{statistics.median([ms(x[4]) for x in r]):>8.3f} {statistics.median([ms(x[5]) for x in r]):>8.3f} "
          f"{(statistics.median(cpu) if cpu else float('nan')):>17.1f} "
          f"{(statistics.median(sysl) if sysl else float('nan')):>13.1f} {sum(int(x[7]) for x in r):>8} "
          f"{(str(statistics.median(syn)) if syn else '-'):>10}")
if "gateway" in med and "nginx" in med:
    print(f"ratio gateway/nginx: {med['gateway']/med['nginx']:.2f}   gateway/direct: {med['gateway']/med['direct']:.2f}")
if "haproxy" in med:
    print(f"ratio gateway/haproxy-jwt: {med['gateway']/med['haproxy']:.2f}   haproxy/nginx: {med['haproxy']/med['nginx']:.2f}")
if "single" in cpu_med and "gateway" in cpu_med:
    s, g = cpu_med["single"], cpu_med["gateway"]
    print(f"single-use request-bound tokens: {med['single']:.0f} req/s ({med['single']/med['nginx']:.2f}x nginx), "
          f"{s:.1f} us/req; {s-g:.1f} us more than a reused token ({(s-g)/s:.0%})")
    if "gateway-lua" in cpu_med:
        print(f"  the same wrk script with one reusable token (gateway-lua): {med['gateway-lua']:.0f} req/s, "
              f"{cpu_med['gateway-lua']:.1f} us/req")
    if "haproxy-fresh" in med:
        print(f"  HAProxy with the same fresh tokens: {med['haproxy-fresh']:.0f} req/s, {cpu_med.get('haproxy-fresh', float('nan')):.1f} us/req; "
              f"single-use gateway / HAProxy-JWT: {med['single']/med['haproxy-fresh']:.2f}")
for t, what in (("shared", "a grant without limits: the cool-down check"),
                ("shared+lim", "a grant with rate and quota: the whole admission script")):
    if t in cpu_med and "gateway" in cpu_med:
        redis=statistics.median([float(x[8]) for x in rows if x[0]=="closed" and x[1]==t])
        print(f"shared state, {what}: {med[t]:.0f} req/s ({med[t]/med['gateway']:.2f}x the gateway without), "
              f"gateway CPU {cpu_med[t]-cpu_med['gateway']:+.1f} us/req, Redis CPU {redis:.1f} us/req, "
              f"closed-loop p99 {p99_med[t]-p99_med['gateway']:+.3f} ms")
if serial:
    print("\none request at a time (wrk -t1 -c1): median of the reps")
    sm={}
    for t in ("gateway","shared","shared+lim"):
        r=[x for x in serial if x[1]==t]
        if not r: continue
        sm[t]=(statistics.median([ms(x[3]) for x in r]), statistics.median([ms(x[4]) for x in r]))
        print(f"{t:10} p50 {sm[t][0]:.3f} ms  p99 {sm[t][1]:.3f} ms")
    for t in ("shared","shared+lim"):
        if t in sm and "gateway" in sm:
            print(f"the Redis round trip ({t}): p50 {sm[t][0]-sm['gateway'][0]:+.3f} ms, p99 {sm[t][1]-sm['gateway'][1]:+.3f} ms")
op=[x for x in rows if x[0].startswith("open@")]
if op:
    print("\nopen loop (oha, latency-corrected): median of the reps")
    print(f"{'rate':6} {'target':13} {'req/s':>8} {'p50':>10} {'p99':>10} {'p99.9':>10} {'non-2xx':>8}")
    for rate in ("1000","5000"):
        for t in ("direct","nginx","haproxy","gateway","gateway-tmpfs","shared","shared+lim"):
            r=[x for x in op if x[0]==f"open@{rate}" and x[1]==t]
            if not r: continue
            m=lambda i: statistics.median([ms(x[i]) for x in r])
            summary["open_p99_ms"][f"{t}@{rate}"]=m(5)
            print(f"{rate:6} {t:13} {statistics.median([float(x[3]) for x in r]):>8.0f} {m(4):>8.3f}ms {m(5):>8.3f}ms {m(6):>8.3f}ms {sum(int(x[7]) for x in r):>8}")
print(f"\npeak RSS: gateway {int(sys.argv[2])/1024:.1f} MiB, nginx worker {int(sys.argv[3])/1024:.1f} MiB")
print(f"peak RSS after the single-use runs: gateway {int(sys.argv[4])/1024:.1f} MiB "
      "(the replay memory keeps every accepted jti until its token expires)")
spent = int(sys.argv[8] or 0)
if spent:
    per = (int(sys.argv[7]) - int(sys.argv[6])) * 1024 / spent
    summary["replay_bytes_per_jti"] = per
    print(f"RSS {int(sys.argv[6])/1024:.1f} -> {int(sys.argv[7])/1024:.1f} MiB over {spent} remembered jtis: "
          f"{per:.1f} bytes per jti (everything the process grew by, counted against the jtis; "
          "the replay_memory bench below measures the memory alone)")
summary.update(rps=med, cpu_us=cpu_med, sys_us=sys_med)
json.dump(summary, open(sys.argv[5], "w"))
PY
if [ -f "$W/perf.data" ]; then
  echo; echo "profile of the gateway (last closed-loop rep), top symbols by self time:"
  perf report -i "$W/perf.data" --stdio --no-children --sort symbol 2>/dev/null \
    | grep -E '^ +[0-9.]+%' | cut -c1-110 | head -25 || true
fi
echo
echo "audit fsync on this disk, same run: one fsync per record vs grouped (benches/audit_fsync.rs)"
FSYNC_OUT=$(BENCH_DIR="$W" cargo bench --locked --quiet --bench audit_fsync 2>/dev/null | grep -v '^$') \
  || FSYNC_OUT="(audit_fsync bench failed)"
echo "$FSYNC_OUT"
FSYNC_P99_US=$(echo "$FSYNC_OUT" | awk '/^disk fsync p99 us:/ {print $5}')
# The signature check alone, same run, same algorithm (criterion, the
# median of its estimate): what a fresh token may cost on top of a reused one.
SIG_OUT=$(cargo bench --locked --quiet --bench hot_path -- "signature check $ALG alone" 2>&1) || true
SIG_US=$(echo "$SIG_OUT" | awk '/time:/ {v=$(NF-3); u=$(NF-2); if (u=="ms") v*=1000; if (u=="ns") v/=1000; print v; exit}')
echo "signature check $ALG alone (benches/hot_path.rs, same run): ${SIG_US:-?} us"
# The replay memory per million remembered tokens, resident (a fresh
# process each: the gateway's own growth above mixes in everything else).
echo
RM_OUT=$(cargo bench --locked --quiet --bench replay_memory 2>&1) || true
echo "$RM_OUT" | grep -E '^(replay|variant|compact|moka)' || echo "(replay_memory bench failed)"
RM_BYTES=$(echo "$RM_OUT" | awk '$1=="compact" && $2=="1000000" {print $3}')
# Every file of each trail (a run long enough rotates the live file).
AUDIT_LINES=$(cat "$W"/audit/audit.jsonl* | wc -l)
echo "audit records written: $AUDIT_LINES (fsynced attempts, grouped)"
"$GW" audit verify "$W/audit" 2>&1 | head -3 || true
"$GW" audit verify "$W/audit-shared" 2>&1 | head -3 || true
[ -n "$TGWP" ] && { "$GW" audit verify "$SHM" 2>&1 | head -3 || true; }

# The issue's targets, each met or missed and by how much, from this run's
# medians (docs/performance.md, "Against the targets", says where the
# difference goes).
python3 - "$W/summary.json" "${FSYNC_P99_US:-}" "${SIG_US:-}" "${RM_BYTES:-}" <<'PY'
import json, sys
s = json.load(open(sys.argv[1])); rps, cpu, p99 = s["rps"], s["cpu_us"], s["open_p99_ms"]
def line(name, ok, got):
    print(f"  {'met   ' if ok else 'MISSED'}  {name}: {got}")
print("\ntargets (this run):")
if "gateway" in rps and "haproxy" in rps:
    r = rps["gateway"] / rps["haproxy"]
    line("ahead of HAProxy verifying the JWT (reusable token)", r > 1.0, f"{r:.2f} x")
if "single" in rps and "haproxy-fresh" in rps:
    r = rps["single"] / rps["haproxy-fresh"]
    line("single-use >= 1.2 x HAProxy-JWT with the same fresh tokens", r >= 1.2, f"{r:.2f} x")
if "single" in cpu and "gateway" in cpu:
    if sys.argv[3]:
        sig = float(sys.argv[3])
        allow = cpu["gateway"] + sig + 5
        line("single-use CPU <= reusable + signature alone + 5 us", cpu["single"] <= allow,
             f"{cpu['single']:.1f} against {cpu['gateway']:.1f} + {sig:.1f} + 5 us ({cpu['single'] - cpu['gateway'] - sig:+.1f} us besides the signature)")
        if "gateway-lua" in cpu:
            print(f"          (against the reusable row with the same wrk script: "
                  f"{cpu['single'] - cpu['gateway-lua'] - sig:+.1f} us besides the signature)")
        if "single-paced" in cpu and "gateway-lua-paced" in cpu:
            a, b = cpu["single-paced"], cpu["gateway-lua-paced"]
            print(f"          at one rate (paced, {rps['single-paced']:.0f} and {rps['gateway-lua-paced']:.0f} req/s): "
                  f"{a:.1f} against {b:.1f} us, {a - b - sig:+.1f} us besides the signature")
        su = s.get("sys_us", {})
        if "single" in su and "gateway" in su:
            user_extra = (cpu["single"] - su["single"]) - (cpu["gateway"] - su["gateway"]) - sig
            print(f"          of that, user time {user_extra:+.1f} us, system time {su['single'] - su['gateway']:+.1f} us "
                  "(fewer requests share each fsync at the lower rate: see req/fsync above)")
    else:
        print("  ?       single-use CPU: no signature microbenchmark figure")
if sys.argv[4]:
    b = float(sys.argv[4])
    line("replay memory <= 48 bytes per remembered jti (RSS, a million tokens)", b <= 48, f"{b:.1f} bytes")
else:
    print("  ?       replay memory: the replay_memory bench failed")
if "gateway" in rps and "nginx" in rps:
    r = rps["gateway"] / rps["nginx"]
    line("closed-loop throughput >= 0.6 x nginx", r >= 0.6, f"{r:.2f} x")
if "gateway" in cpu and "nginx" in cpu:
    d = cpu["gateway"] - cpu["nginx"]
    line("proxy CPU per request <= nginx + 8 us", d <= 8,
         f"{cpu['gateway']:.1f} against {cpu['nginx']:.1f} us ({d:+.1f} us)")
    if "gateway-tmpfs" in cpu:
        t = cpu["gateway-tmpfs"]
        print(f"          the disk's part: {cpu['gateway'] - t:+.1f} us (the same gateway with its trail on tmpfs: "
              f"{t:.1f} us, {t - cpu['nginx']:+.1f} over nginx, {rps['gateway-tmpfs'] / rps['nginx']:.2f} x its throughput)")
if "gateway@5000" in p99 and "nginx@5000" in p99:
    if sys.argv[2]:
        f99 = float(sys.argv[2]) / 1000
        allow = p99["nginx@5000"] + 2 * f99
        line("open-loop p99 at 5 000 req/s <= nginx p99 + 2 x disk fsync p99", p99["gateway@5000"] <= allow,
             f"{p99['gateway@5000']:.2f} ms against {p99['nginx@5000']:.2f} + 2 x {f99:.2f} ms")
        if "gateway-tmpfs@5000" in p99:
            print(f"          the disk's part: the trail on tmpfs gives {p99['gateway-tmpfs@5000']:.2f} ms")
    else:
        print("  ?       open-loop p99 at 5 000 req/s: no disk fsync p99 (the audit_fsync bench failed)")
line("peak RSS under load <= 30 MiB", s["rss_mib"] <= 30, f"{s['rss_mib']:.1f} MiB")
line("zero non-2xx answers", s["non2xx"] == 0, f"{s['non2xx']} non-2xx or unanswered")
PY
[ "$SINGLE_FAILED" = 0 ] || { echo "FAILED: a single-use row ran out of tokens (see above)" >&2; exit 1; }
