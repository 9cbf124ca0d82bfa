#!/usr/bin/env bash
# Two gateway binaries side by side, for changes smaller than this
# machine's noise in closed-loop runs (+/-15 % between runs):
#   1. instructions per request under callgrind (valgrind): exact and
#      repeatable, user space only, all threads; a copy or fill counts per
#      byte moved, so it overstates what copies cost in time, and SHA-256
#      runs in software (valgrind's CPU hides the SHA extensions the real
#      run uses), so hashing is about half of the count;
#   2. pairs at a fixed rate (oha, open loop): user and system CPU per
#      request from /proc, A and B alternating, each pair's difference;
#   3. the same pairs in closed loop (wrk -t2 -c32).
# Both gateways are pinned to CPU 0, oha/wrk and the stub to CPU 1. Every
# answer is checked (non-2xx counted).
#
#   bench/compare.sh OLD_BINARY NEW_BINARY [--pairs 5] [--secs 5] [--rate 4000] [--calls 1000]
#
# Installs nginx, wrk and valgrind from Debian when missing, oha from
# crates.io. Stops everything it started, by PID. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n '2,16p' "$0" >&2; exit 2; }
A_BIN=$(realpath "$1") B_BIN=$(realpath "$2"); shift 2
PAIRS=5 SECS=5 RATE=4000 CALLS=1000 ALG=EdDSA OHA=1
while [ $# -gt 0 ]; do
  case "$1" in
    --pairs) PAIRS=$2; shift 2;;
    --secs) SECS=$2; shift 2;;
    --rate) RATE=$2; shift 2;;
    --calls) CALLS=$2; shift 2;;
    *) echo "unknown argument $1" >&2; exit 2;;
  esac
done
for b in "$A_BIN" "$B_BIN"; do [ -x "$b" ] || { echo "not an executable: $b" >&2; exit 2; }; done

source "$(dirname "$0")/setup.sh"
[ -n "$OHA_BIN" ] || { echo "compare.sh needs oha (cargo install oha)" >&2; exit 1; }
if ! need valgrind; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
fi
TOKEN=$("$A_BIN" token mint --alg "$ALG" --key "$W/idp.key" --iss https://idp.bench --sub bench --team bench --ttl-s 3500)
taskset -c 1 nginx -c "$W/stub/nginx.conf" & PIDS+=($!)

wait_port "$STUB"
HZ=$(getconf CLK_TCK)
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
oha_run() { # url; then oha's own arguments
  local url=$1; shift
  taskset -c 1 "$OHA_BIN" --no-tui "$@" -m POST -H "Content-Type: application/json" \
    -H "Authorization: Bearer $TOKEN" -d "$BODY" --output-format json "$url"
}
count() { # oha json on stdin -> "requests non2xx"
  python3 -c '
import json, sys
c = json.load(sys.stdin).get("statusCodeDistribution", {})
print(sum(c.values()), sum(n for s, n in c.items() if not s.startswith("2")))'
}

# --- 1. instructions per request -------------------------------------------
echo "# A = $A_BIN"
echo "# B = $B_BIN"
echo "# gateways on CPU 0; oha, wrk and the stub on CPU 1"
echo
echo "instructions per request (callgrind, $CALLS requests after 300 of warm-up, 8 connections)"
for v in A B; do
  bin=${v}_BIN; P=$(port); AP=$(port)
  gateway_conf "$W/cg-$v.toml" "$P" "$AP" "cg-$v"
  taskset -c 0 valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$W/cg-$v.out" \
    "${!bin}" serve --config "$W/cg-$v.toml" 2>"$W/cg-$v.log" & vp=$!; PIDS+=($vp)
  wait_port "$P" || { echo "gateway $v under valgrind did not start" >&2; tail "$W/cg-$v.log" >&2; exit 1; }
  url="http://127.0.0.1:$P/2.8/campaigns/delete"
  oha_run "$url" -n 300 -c 8 >/dev/null
  callgrind_control -z "$vp" >/dev/null 2>&1
  read -r n bad < <(oha_run "$url" -n "$CALLS" -c 8 | count)
  callgrind_control -d "$vp" >/dev/null 2>&1
  kill -INT "$vp"; wait "$vp" 2>/dev/null || true
  dump=$(ls -t "$W"/cg-$v.out.* 2>/dev/null | head -1)
  ir=$(awk '/^(summary|totals):/ {print $2; exit}' "${dump:-$W/cg-$v.out}")
  python3 -c "print('  %s  %8.1f k instructions/request  (%d answers, %d non-2xx)' % ('$v', $ir / $n / 1000, $n, $bad))"
done

# --- 2 and 3. pairs ----------------------------------------------------------
declare -A URL PID
for v in A B; do
  bin=${v}_BIN; P=$(port); AP=$(port)
  gateway_conf "$W/gw-$v.toml" "$P" "$AP" "audit-$v"
  taskset -c 0 "${!bin}" serve --config "$W/gw-$v.toml" 2>"$W/gw-$v.log" & PID[$v]=$!; PIDS+=(${PID[$v]})
  wait_port "$P"
  URL[$v]="http://127.0.0.1:$P/2.8/campaigns/delete"
done
post_lua
RES="$W/pairs.tsv"; : > "$RES"
cpu_of() { # pid before-ticks after-ticks requests -> "user sys" us/request
  python3 -c "
b='$2'.split(); a='$3'.split(); r=max($4, 1)
print('%.1f %.1f' % ((int(a[0])-int(b[0]))/$HZ*1e6/r, (int(a[1])-int(b[1]))/$HZ*1e6/r))"
}
for i in $(seq "$PAIRS"); do
  for v in A B; do
    b=$(ticks "${PID[$v]}")
    read -r n bad < <(oha_run "${URL[$v]}" -z "${SECS}s" -w -q "$RATE" --latency-correction -c 32 | count)
    a=$(ticks "${PID[$v]}")
    echo -e "open\t$i\t$v\t$(cpu_of "${PID[$v]}" "$b" "$a" "$n")\t$n\t$bad" >> "$RES"
  done
  for v in A B; do
    b=$(ticks "${PID[$v]}")
    out=$(taskset -c 1 wrk -t2 -c32 -d"${SECS}s" -s "$W/post.lua" "${URL[$v]}")
    a=$(ticks "${PID[$v]}")
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    bad=$(echo "$out" | awk '/Non-2xx/ {print $NF}'); bad=${bad:-0}
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    echo -e "closed\t$i\t$v\t$(cpu_of "${PID[$v]}" "$b" "$a" "$n")\t$n\t$bad\t$rps" >> "$RES"
  done
done
python3 - "$RES" "$RATE" <<'PY'
import sys, statistics
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
for mode, title in (("open", f"fixed rate {sys.argv[2]} req/s"), ("closed", "closed loop (wrk -t2 -c32)")):
    print(f"\n{title}: CPU us/request per pair, user + system")
    pairs = {}
    for r in rows:
        if r[0] == mode:
            u, s = map(float, r[3].split())
            pairs.setdefault(int(r[1]), {})[r[2]] = (u, s, int(r[4]), int(r[5]), r[6] if len(r) > 6 else "")
    lower = {"user": 0, "total": 0}
    tot = {"A": [], "B": []}
    for i in sorted(pairs):
        p = pairs[i]
        if set(p) != {"A", "B"}:
            continue
        line = []
        for v in "AB":
            u, s, n, bad, rps = p[v]
            tot[v].append(u + s)
            line.append(f"{v} {u:5.1f} + {s:5.1f} = {u+s:6.1f}" + (f" ({float(rps):.0f} req/s)" if rps else "") + (f" NON-2XX {bad}" if bad else ""))
        lower["user"] += p["B"][0] < p["A"][0]
        lower["total"] += sum(p["B"][:2]) < sum(p["A"][:2])
        print(f"  pair {i}: " + "   ".join(line))
    n = len(tot["A"])
    if n:
        print(f"  medians: A {statistics.median(tot['A']):.1f}, B {statistics.median(tot['B']):.1f}; "
              f"B lower in {lower['total']} of {n} pairs (user time: {lower['user']} of {n})")
PY
