#!/usr/bin/env python3
"""Chart checks for CI: lint every ci/*-values.yaml scenario with real Helm
(the helm-sdkpy package bundles Helm's library), validate each scenario's
rendered gateway config with `batch-gateway check-config --skip-files`,
check that every ci/refused/*-values.yaml scenario is refused with its
message, require a `# --` comment on every value, and keep README.md's
values table in step.

helm-sdkpy has no `helm template`, and Helm's lint mode logs a template's
`fail` instead of failing. Both are read from that log: the chart's own
refusals, and the rendered config, which a probe template added to the
scenario's temporary copy of the chart hands out through `fail`. A
scenario file says what it expects in `# expect-config: TEXT` lines (the
rendered config contains TEXT) or `# expect-failure: TEXT` (rendering is
refused with a message containing TEXT).

    python3 helm/check_chart.py --binary target/debug/batch-gateway [--write-readme]
"""
import argparse
import asyncio
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml
import helm_sdkpy

CHART = os.path.join(os.path.dirname(os.path.abspath(__file__)), "batch-gateway")
BEGIN, END = "<!-- values:begin -->", "<!-- values:end -->"


def merge(base, over):
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def documented_values(text):
    """(dotted key, description) for every leaf value, from `# --` comments."""
    rows, stack, pending = [], [], None
    for line in text.splitlines():
        if not line.strip():
            continue
        m = re.match(r"^(\s*)# -- ?(.*)$", line)
        if m:
            pending = m.group(2)
            continue
        c = re.match(r"^(\s*)#\s?(.*)$", line)
        if c:
            if pending is not None:
                pending += " " + c.group(2)
            continue
        k = re.match(r"^(\s*)([A-Za-z0-9_]+):\s*(.*)$", line)
        if not k:
            continue
        indent, key, rest = len(k.group(1)), k.group(2), k.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([s[1] for s in stack] + [key])
        covered = any(s[2] for s in stack)  # an ancestor's comment covers it
        documented = pending is not None
        if not covered:
            if rest == "":
                # A map or list: its own comment covers its children.
                if documented:
                    rows.append((path, pending.strip()))
            else:
                rows.append((path, pending.strip() if documented else None))
        if rest == "":
            stack.append((indent, key, documented or covered))
        pending = None
    return rows


PROBE_MARK = "RENDERED-CONFIG:"
PROBE = '{{- fail (printf "%s%s" "' + PROBE_MARK + '" (include "batch-gateway.config" .)) -}}\n'
LINT = (
    "import asyncio, json, sys, helm_sdkpy\n"
    "r = asyncio.run(helm_sdkpy.Lint(helm_sdkpy.Configuration()).run(sys.argv[1]))\n"
    "print(json.dumps(r))\n"
)


def lint(chart):
    """(lint result, the chart's refusals, the rendered config) for `chart`."""
    with open(os.path.join(chart, "templates", "zz-render-probe.yaml"), "w") as f:
        f.write(PROBE)
    p = subprocess.run([sys.executable, "-c", LINT, chart], capture_output=True, text=True)
    lines = p.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines else {"Errors": [p.stderr[-2000:]]}
    fails = [json.loads(m) for m in re.findall(r'fail message=("(?:[^"\\]|\\.)*")', p.stderr)]
    rendered = [m[len(PROBE_MARK):] for m in fails if m.startswith(PROBE_MARK)]
    refusals = [m for m in fails if not m.startswith(PROBE_MARK)]
    return result, refusals, (rendered[0] if rendered else None)


def expectations(text, kind):
    return [m.strip() for m in re.findall(r"^# expect-" + kind + r": (.*)$", text, flags=re.M)]


def scenario_chart(tmp, defaults, text):
    merged = merge(defaults, yaml.safe_load(text) or {})
    chart = os.path.join(tmp, "batch-gateway")
    shutil.copytree(CHART, chart)
    with open(os.path.join(chart, "values.yaml"), "w") as f:
        yaml.safe_dump(merged, f)
    return chart


def readme_table(rows):
    lines = ["| value | what it does |", "|---|---|"]
    lines += [f"| `{k}` | {d} |" for k, d in rows]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()
    failed = passed = 0

    with open(os.path.join(CHART, "values.yaml")) as f:
        values_text = f.read()
    rows = documented_values(values_text)
    for key, desc in rows:
        if desc is None:
            print(f"FAIL values.yaml: {key} has no '# --' comment")
            failed += 1

    readme_path = os.path.join(CHART, "README.md")
    with open(readme_path) as f:
        readme = f.read()
    table = readme_table([(k, d) for k, d in rows if d is not None])
    wanted = re.sub(re.escape(BEGIN) + r".*" + re.escape(END), f"{BEGIN}\n{table}\n{END}", readme, flags=re.S)
    if wanted != readme:
        if args.write_readme:
            with open(readme_path, "w") as f:
                f.write(wanted)
            print("README.md values table rewritten")
        else:
            print("FAIL README.md: the values table is out of step with values.yaml (run with --write-readme)")
            failed += 1

    defaults = yaml.safe_load(values_text)
    ci = os.path.join(CHART, "ci")
    scenarios = sorted(f for f in os.listdir(ci) if f.endswith("-values.yaml"))
    for scenario in scenarios:
        with open(os.path.join(ci, scenario)) as f:
            text = f.read()
        with tempfile.TemporaryDirectory() as tmp:
            chart = scenario_chart(tmp, defaults, text)
            result, refusals, rendered = lint(chart)
            errors = [m for m in result.get("Messages") or [] if m.get("Severity", 0) >= 3]
            if result.get("Errors") or errors or refusals:
                # helm-sdkpy prints error details as {}: name where it failed.
                where = ", ".join(m.get("Path", "?") for m in errors) or "?"
                print(f"FAIL helm lint {scenario}: errors in {where} {refusals}")
                failed += 1
            else:
                print(f"PASS helm lint {scenario}")
                passed += 1
            if rendered is None:
                print(f"FAIL render {scenario}: the rendered config was not seen")
                failed += 1
                continue
            missing = [e for e in expectations(text, "config") if e not in rendered]
            if missing:
                print(f"FAIL render {scenario}: the rendered config lacks {missing}")
                failed += 1
            cfg = os.path.join(tmp, "gateway.toml")
            with open(cfg, "w") as f:
                f.write(rendered)
            r = subprocess.run([args.binary, "check-config", "--config", cfg, "--skip-files"],
                               capture_output=True, text=True)
            if r.returncode != 0:
                print(f"FAIL check-config {scenario}: {r.stdout}{r.stderr}")
                failed += 1
            else:
                print(f"PASS check-config {scenario} (rendered)")
                passed += 1
    refused = os.path.join(ci, "refused")
    for scenario in sorted(f for f in os.listdir(refused) if f.endswith("-values.yaml")):
        with open(os.path.join(refused, scenario)) as f:
            text = f.read()
        wanted = expectations(text, "failure")
        with tempfile.TemporaryDirectory() as tmp:
            _, refusals, _ = lint(scenario_chart(tmp, defaults, text))
        if wanted and all(any(w in m for m in refusals) for w in wanted):
            print(f"PASS refused {scenario}: {refusals[0][:100]}...")
            passed += 1
        else:
            print(f"FAIL refused {scenario}: wanted a refusal containing {wanted}, got {refusals}")
            failed += 1
    # The caller-side example: a pod whose projected token is meant for the
    # gateway (audience batch-gateway, at most the issuer's hour).
    with open(os.path.join(CHART, "examples", "caller-pod.yaml")) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    pods = [d for d in docs if d.get("kind") == "Pod"]
    tokens = [
        src["serviceAccountToken"]
        for p in pods
        for v in p["spec"].get("volumes", [])
        for src in v.get("projected", {}).get("sources", [])
        if "serviceAccountToken" in src
    ]
    mounted = {m["name"] for p in pods for c in p["spec"]["containers"] for m in c.get("volumeMounts", [])}
    volumes = {v["name"] for p in pods for v in p["spec"].get("volumes", [])}
    if tokens and all(t.get("audience") == "batch-gateway" and t.get("expirationSeconds", 3600) <= 3600 for t in tokens) and volumes <= mounted:
        print("PASS examples/caller-pod.yaml: a projected token for audience batch-gateway, mounted")
        passed += 1
    else:
        print(f"FAIL examples/caller-pod.yaml: tokens {tokens}, volumes {volumes}, mounted {mounted}")
        failed += 1
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
