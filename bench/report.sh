#!/usr/bin/env bash
# How `audit report` scales: a synthetic trail of RECORDS records (default
# 1 000 000) over REPLICAS replica chains (default 3), valid hash chains
# shaped like the gateway's records (mostly refusals, a tenth deletes with
# their outcomes, summaries), then the report in each format with its wall
# time and peak memory. Usage: bench/report.sh [RECORDS] [REPLICAS]
set -euo pipefail
cd "$(dirname "$0")/.."
records=${1:-1000000}
replicas=${2:-3}
bin=target/release/batch-gateway
[ -x "$bin" ] || cargo build --release --locked
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
python3 - "$dir" "$records" "$replicas" <<'PY'
import hashlib, json, os, sys, random
out, total, replicas = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
random.seed(7)
start = 1796000000  # 2026-11-30
per = total // replicas
teams = ["growth", "ops", "support", "billing", "search"]
for r in range(replicas):
    os.makedirs(f"{out}/gw-{r}")
    prev, seq = "0" * 64, 0
    with open(f"{out}/gw-{r}/audit.jsonl", "w") as f:
        def write(rec):
            global prev, seq
            seq += 1
            rec = {"v": 1, "seq": seq, **rec, "replica": f"gw-{r}", "prev": prev}
            line = json.dumps(rec, separators=(",", ":"))
            prev = hashlib.sha256(line.encode()).hexdigest()
            f.write(line + "\n")
        i = 0
        while seq < per:
            i += 1
            t = start + i * 7 * 86400 * replicas // total
            ts = "%s.%03dZ" % (__import__("time").strftime("%Y-%m-%dT%H:%M:%S", __import__("time").gmtime(t)), i % 1000)
            rid = f"{r}-{i}"
            team = teams[i % len(teams)]
            caller = {"iss": "https://idp", "sub": f"svc-{i % 40}", "team": team, "token_fp": "0" * 16}
            k = random.random()
            if k < 0.1:
                write({"ts": ts, "request_id": rid, "phase": "attempt", "decision": "allow", "reason": "ok", "caller": caller,
                       "project": f"p{i % 4}", "campaign_id": "orchestration_" + "%032x" % i, "secret_source": "cached", "action": "campaigns.delete"})
                write({"ts": ts, "request_id": rid, "phase": "outcome", "decision": "allow", "reason": "ok",
                       "upstream": {"status": 204 if k < 0.097 else 429, "latency_ms": 40}})
            elif k < 0.6:
                write({"ts": ts, "request_id": rid, "phase": "denied", "decision": "deny", "reason": "token_invalid",
                       "detail": "bad_signature", "client_addr": f"10.{i % 7}.{i % 251}.{i % 199}:4{i % 1000:03d}"})
            elif k < 0.99:
                write({"ts": ts, "request_id": rid, "phase": "denied", "decision": "deny", "reason": "forbidden",
                       "caller": caller, "project": f"p{i % 4}", "action": "campaigns.delete"})
            else:
                write({"ts": ts, "phase": "summary", "count": 25, "by_reason": {"token_missing": 25},
                       "by_client_addr": {"10.9.9.9": 25}, "window_start": ts, "window_end": ts})
PY
echo "trail: $records records over $replicas replicas, $(du -sh "$dir" | cut -f1)"
for fmt in text json html; do
  /usr/bin/time -f "%e %M" -o "$dir/time" "$bin" audit report "$dir" --since 2026-11-29T00:00:00Z --format "$fmt" --output "$dir/report.$fmt" >/dev/null
  read -r secs kb < "$dir/time"
  echo "report --format $fmt: ${secs} s, peak RSS $((kb / 1024)) MiB, output $(du -h "$dir/report.$fmt" | cut -f1)"
done
