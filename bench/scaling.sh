#!/usr/bin/env bash
# Two CPUs: the gateway with its multi-thread runtime (one worker per CPU)
# against nginx with two workers, and the gateway held to one CPU (its
# current-thread runtime), at fixed rates where none of them saturates,
# interleaved and repeated. Everything shares CPUs 0 and 1 here (the
# machine has two): the load generator (oha) and the TLS stub too, so the
# figures are CPU per request of the proxy processes, not throughput.
#
#   bench/scaling.sh [--reps 3] [--secs 8] [--rates "2000 5000 8000"]
#
# ES256 reusable tokens, durable audit, TLS upstream, as bench/run.sh.
# Needs oha (bench/run.sh installs it). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=3 SECS=8 RATES="2000 5000 8000" OHA=1 ALG=ES256
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) REPS=$2; shift 2;;
    --secs) SECS=$2; shift 2;;
    --rates) RATES=$2; shift 2;;
    *) echo "unknown argument $1" >&2; exit 2;;
  esac
done
source "$(dirname "$0")/setup.sh"
[ -n "$OHA_BIN" ] || { echo "scaling.sh needs oha (bench/run.sh installs it)" >&2; exit 1; }
cargo build --release --locked --quiet
GW="$PWD/target/release/batch-gateway"
NGX=$(port); G2=$(port); G2A=$(port); G1=$(port); G1A=$(port)
nginx_proxy_conf "$NGX"
sed -i 's/^worker_processes 1;/worker_processes 2;/' "$W/proxy/nginx.conf"
gateway_conf "$W/g2.toml" "$G2" "$G2A" audit-2
gateway_conf "$W/g1.toml" "$G1" "$G1A" audit-1
TOKEN=$("$GW" token mint --alg "$ALG" --key "$W/idp.key" --iss https://idp.bench --sub bench --team bench --ttl-s 3500)

taskset -c 0,1 nginx -c "$W/stub/nginx.conf" & PIDS+=($!)
taskset -c 0,1 nginx -c "$W/proxy/nginx.conf" & PIDS+=($!)
(cd "$W" && exec taskset -c 0,1 "$GW" serve --config "$W/g2.toml" 2>"$W/g2.log") & G2_PID=$!; PIDS+=($G2_PID)
(cd "$W" && exec taskset -c 0 "$GW" serve --config "$W/g1.toml" 2>"$W/g1.log") & G1_PID=$!; PIDS+=($G1_PID)
for p in $STUB $NGX $G2 $G1; do wait_port "$p" 100 || { echo "port $p did not open" >&2; exit 1; }; done
NGX_WORKERS=$(pgrep -P "$(cat "$W/proxy/nginx.pid")" | tr '\n' ' ')
[ "$(echo $NGX_WORKERS | wc -w)" = 2 ] || { echo "nginx did not start two workers" >&2; exit 1; }
THREADS=$(ls "/proc/$G2_PID/task" | wc -l)

declare -A URL=( [nginx-2w]="http://127.0.0.1:$NGX/2.8/campaigns/delete"
                 [gateway-2cpu]="http://127.0.0.1:$G2/2.8/campaigns/delete"
                 [gateway-1cpu]="http://127.0.0.1:$G1/2.8/campaigns/delete" )
declare -A WHO=( [nginx-2w]="$NGX_WORKERS" [gateway-2cpu]="$G2_PID" [gateway-1cpu]="$G1_PID" )
RES="$W/scaling.tsv"; : > "$RES"
echo "# nginx: 2 workers; gateway-2cpu: taskset 0,1 ($THREADS threads); gateway-1cpu: taskset 0; oha and the stub on 0,1 too"
for rep in $(seq "$REPS"); do
  for rate in $RATES; do
    for t in nginx-2w gateway-2cpu gateway-1cpu; do
      # shellcheck disable=SC2086
      b=$(cpu_ticks ${WHO[$t]})
      out=$("$OHA_BIN" --no-tui -z "${SECS}s" -w -q "$rate" --latency-correction -c 32 -m POST \
        -H "Content-Type: application/json" -H "Authorization: Bearer $TOKEN" -d "$BODY" \
        --output-format json "${URL[$t]}")
      # shellcheck disable=SC2086
      a=$(cpu_ticks ${WHO[$t]})
      echo "$out" | python3 -c "
import json, sys
d = json.load(sys.stdin); c = d.get('statusCodeDistribution', {})
n = sum(c.values()); bad = sum(v for k, v in c.items() if not k.startswith('2')) + sum(d.get('errorDistribution', {}).values())
print('\t'.join(['$t', '$rate', '$rep', str(round(d['summary']['requestsPerSec'])),
  str(round(($a - $b) / $HZ * 1e6 / max(n, 1), 1)), str(round(d['latencyPercentiles']['p99'] * 1e3, 3)), str(bad)]))" >> "$RES"
    done
  done
done
python3 - "$RES" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
print(f"\n{'rate':>6} {'target':14} {'req/s':>7} {'CPU us/req':>11} {'p99 ms':>8} {'non-2xx':>8}   (medians of the reps)")
bad = 0
for rate in dict.fromkeys(r[1] for r in rows):
    cpu = {}
    for t in ("nginx-2w", "gateway-2cpu", "gateway-1cpu"):
        r = [x for x in rows if x[0] == t and x[1] == rate]
        cpu[t] = statistics.median(float(x[4]) for x in r)
        bad += sum(int(x[6]) for x in r)
        print(f"{rate:>6} {t:14} {statistics.median(float(x[3]) for x in r):>7.0f} {cpu[t]:>11.1f} "
              f"{statistics.median(float(x[5]) for x in r):>8.2f} {sum(int(x[6]) for x in r):>8}")
    print(f"{'':6} gateway-2cpu - nginx-2w: {cpu['gateway-2cpu'] - cpu['nginx-2w']:+.1f} us; "
          f"gateway-2cpu - gateway-1cpu: {cpu['gateway-2cpu'] - cpu['gateway-1cpu']:+.1f} us")
if bad:
    print(f"FAILED: {bad} non-2xx or unanswered requests", file=sys.stderr)
    sys.exit(1)
PY
