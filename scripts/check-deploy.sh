#!/usr/bin/env bash
# Checks the files in deploy/ against each other and against what spotd exposes:
#   1. promtool check rules deploy/prometheus-alerts.yaml, and the dashboard's queries parse as PromQL;
#   2. the dashboard is valid JSON, and every spotd_* metric the dashboard and the alert rules name is in a scrape
#      of spotd's /metrics (histograms named with _bucket, _sum or _count are looked up by their base name);
#   3. systemd-analyze verify deploy/spotd.service, when systemd-analyze is there.
#
# Usage: scripts/check-deploy.sh METRICS_FILE
#   METRICS_FILE holds a scrape of /metrics, e.g.
#     swift run spotd demo   # or a server that has seen some traffic, then:
#     curl -s localhost:8080/metrics > .build/metrics.txt && scripts/check-deploy.sh .build/metrics.txt
#   Families with a fixed set of labels start at 0; the others (notices by source and kind, events by type,
#   requests by route) appear once used, so scrape a server that has done some work (the demo, or a drill).
# Environment: PROMTOOL_WAIT_SECONDS (default 0) is how long to wait for promtool to be installed.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 METRICS_FILE   (a scrape of spotd's /metrics)" >&2
    exit 2
fi
metrics=$(realpath -- "$1")
if [[ ! -r "$metrics" ]]; then
    echo "check-deploy: cannot read $1" >&2
    exit 2
fi
cd "$(dirname "$0")/.."

dashboard=deploy/grafana-dashboard.json
alerts=deploy/prometheus-alerts.yaml
unit=deploy/spotd.service
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 1. Alert rules and dashboard queries, with promtool (Debian's `prometheus` package).
wait_seconds=${PROMTOOL_WAIT_SECONDS:-0}
waited=0
until command -v promtool >/dev/null 2>&1; do
    if ((waited >= wait_seconds)); then
        echo "check-deploy: promtool not found after ${wait_seconds}s (apt-get install prometheus)" >&2
        exit 1
    fi
    ((waited == 0)) && echo "== waiting for promtool to be installed (up to ${wait_seconds}s)"
    sleep 5
    waited=$((waited + 5))
done

echo "== promtool check rules $alerts"
promtool check rules "$alerts"

# The dashboard's queries, with Grafana's variables given plain values, as alert rules promtool can parse.
python3 - "$dashboard" "$work/dashboard-queries.yaml" <<'EOF'
import json, sys

try:
    with open(sys.argv[1]) as f:
        dashboard = json.load(f)
except json.JSONDecodeError as error:
    sys.exit(f"check-deploy: {sys.argv[1]} is not valid JSON: {error}")

def exprs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from exprs(item)

values = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h",
          "$job": ".*", "$instance": ".*", "$pool": ".*"}
lines = ["groups:", "  - name: dashboard", "    rules:"]
for number, expr in enumerate(exprs(dashboard), 1):
    for variable, value in values.items():
        expr = expr.replace(variable, value)
    if "$" in expr:
        sys.exit(f"check-deploy: a dashboard query uses an unknown variable: {expr}")
    lines += [f"      - alert: DashboardQuery{number}", f"        expr: {json.dumps(expr)}"]
with open(sys.argv[2], "w") as f:
    f.write("\n".join(lines) + "\n")
print(f"{number} dashboard queries written for promtool")
EOF
echo "== promtool: the dashboard's queries parse"
promtool check rules "$work/dashboard-queries.yaml"

# 2. The dashboard is JSON, and every metric named is exposed.
echo "== metric names in $dashboard and $alerts against $1"
python3 - "$dashboard" "$alerts" "$metrics" <<'EOF'
import json, re, sys

dashboard_path, alerts_path, metrics_path = sys.argv[1:4]
try:
    with open(dashboard_path) as f:
        dashboard = json.load(f)
except json.JSONDecodeError as error:
    sys.exit(f"check-deploy: {dashboard_path} is not valid JSON: {error}")
if not isinstance(dashboard, dict) or not isinstance(dashboard.get("panels"), list) or not dashboard["panels"]:
    sys.exit(f"check-deploy: {dashboard_path} has no panels")

# What the scrape exposes: sample names, and the names and types declared by # TYPE lines.
samples, types = set(), {}
with open(metrics_path) as f:
    for line in f:
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split()
            if len(parts) >= 4 and parts[1] == "TYPE":
                types[parts[2]] = parts[3]
            continue
        samples.add(re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line).group(0))
if not samples:
    sys.exit(f"check-deploy: {metrics_path} holds no samples: is it a scrape of /metrics?")

SUFFIXES = ("_bucket", "_sum", "_count")
NAME = re.compile(r"(?<![A-Za-z0-9_:])spotd_[A-Za-z0-9_]+")

# The queries only: descriptions and annotations may name a histogram by its base name.
def queries(node, keys):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in keys and isinstance(value, str):
                yield value
            else:
                yield from queries(value, keys)
    elif isinstance(node, list):
        for item in node:
            yield from queries(item, keys)

def alert_queries(path):
    with open(path) as f:
        text = f.read()
    try:
        import yaml
    except ImportError:  # no PyYAML: every line but comments (promtool has checked the structure)
        return [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return list(queries(yaml.safe_load(text), {"expr"}))

sources = {
    dashboard_path: list(queries(dashboard, {"expr", "query", "definition"})),
    alerts_path: alert_queries(alerts_path),
}

def base(name):
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name

def exposed(name):
    if name in samples or types.get(name) not in (None, "histogram", "summary"):
        return True
    stem = base(name)
    if stem == name:
        return False
    return types.get(stem) in ("histogram", "summary") or any(stem + s in samples for s in SUFFIXES)

problems = 0
for path, texts in sources.items():
    names = sorted({name for text in texts for name in NAME.findall(text)})
    if not names:
        print(f"{path}: names no spotd_ metric at all")
        problems += 1
    for name in names:
        if name not in samples and types.get(name) in ("histogram", "summary"):
            print(f"{path}: {name} is a {types[name]}: query {name}_bucket, _sum or _count")
            problems += 1
        elif not exposed(name):
            print(f"{path}: {name} is not in the scrape" + (f" ({base(name)} is missing)" if base(name) != name else ""))
            problems += 1
    print(f"{path}: {len(names)} metric names checked: {' '.join(names)}")
if problems:
    sys.exit(f"check-deploy: {problems} problem(s) with metric names")
print("every metric name is exposed")
EOF

# 3. The systemd unit.
if command -v systemd-analyze >/dev/null 2>&1; then
    echo "== systemd-analyze verify $unit"
    checked=$unit
    if [[ ! -x /usr/local/bin/spotd ]]; then
        # verify fails on a missing ExecStart binary; check everything else with a stand-in.
        echo "(/usr/local/bin/spotd is not installed: verifying a copy whose ExecStart runs /bin/true)"
        checked=$work/spotd.service
        sed 's#^ExecStart=/usr/local/bin/spotd#ExecStart=/bin/true#' "$unit" >"$checked"
    fi
    # verify exits 0 on a directive it ignores (a typo, a bad value): any complaint about the unit fails too.
    verify_status=0
    verify_output=$(systemd-analyze verify "$checked" 2>&1) || verify_status=$?
    [[ -n "$verify_output" ]] && echo "$verify_output"
    if ((verify_status != 0)) || grep -q 'spotd\.service' <<<"$verify_output"; then
        echo "check-deploy: systemd-analyze verify found problems in $unit" >&2
        exit 1
    fi
else
    echo "== systemd-analyze not found: skipping the check of $unit"
fi

echo "check-deploy: all checks passed"
