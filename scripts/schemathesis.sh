#!/usr/bin/env bash
# Runs schemathesis (every check, fixed seed, authenticated) against a live spotd on a fresh SQLite file, twice:
# once without a webhook secret, once with one (so that the signature headers are fuzzed too). In the signed pass a
# small proxy (scripts/sign-proxy.py) signs the notices schemathesis sends without a signature of their own, so
# that signed bodies are parsed as well as refused.
#
# The run fails when:
#   - the server does not come up, or is not alive and answering at the end of a pass;
#   - schemathesis exits non-zero, unless every error it reports is the one known crash inside its own data
#     generator (hypothesis's "AST constructor recursion depth mismatch" on this Python) and no check failed;
#   - schemathesis exits non-zero and wrote no report (it did not run);
#   - the server logged an internal error ("request failed", written with every 500).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${SPOTD_BIN:-.build/debug/spotd}
BASE_PORT=${SCHEMATHESIS_PORT:-18090}
TOKEN=schemathesis-admin-token-0123456789
SECRET=schemathesis-webhook-secret
KNOWN_CRASH="AST constructor recursion depth mismatch"

run_pass() {
    local name=$1 port=$2 target=$2
    shift 2
    if [ "${1:-}" = "--signed" ]; then
        # schemathesis cannot sign; a small proxy signs the notices that carry no signature of their own.
        shift
        target=$((port + 10))
        python3 scripts/sign-proxy.py "$target" "$port" "$SECRET" >".build/schemathesis-proxy-$name.log" 2>&1 &
        PROXY_PID=$!
        trap 'kill "${PROXY_PID:-0}" 2>/dev/null || true' EXIT
    fi
    local work=.build/schemathesis/$name
    rm -rf "$work" && mkdir -p "$work"
    "$BIN" serve --port "$port" --db "$work/spotd.sqlite" --admin-token "$TOKEN" --sim-boot-seconds 1 "$@" \
        >"$work/server.log" 2>&1 &
    local pid=$!
    trap 'kill "$pid" 2>/dev/null || true' RETURN
    local up=0
    for _ in $(seq 1 100); do
        # Through the proxy when there is one: both must answer.
        if curl -fsS "http://127.0.0.1:$target/healthz" >/dev/null 2>&1; then up=1; break; fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if [ "$target" != "$port" ] && ! kill -0 "${PROXY_PID:-0}" 2>/dev/null; then
        up=0
        cat ".build/schemathesis-proxy-$name.log"
    fi
    if [ "$up" -ne 1 ]; then
        echo "schemathesis[$name]: spotd (port $port) or the signing proxy (port $target) did not come up; spotd's log:"
        cat "$work/server.log"
        return 1
    fi

    set +e
    # Every check runs (schemathesis 4's default). No `--checks all` here: a CLI option outranks the per-operation
    # settings of schemathesis.toml, and so would turn use_after_free back on for /v1/nodes/{id}.
    schemathesis run openapi.yaml --url "http://127.0.0.1:$target" --seed 20261129 \
        --max-examples "${SCHEMATHESIS_EXAMPLES:-25}" --workers 2 --header "Authorization: Bearer $TOKEN" \
        --report junit --report-junit-path "$work/junit.xml" --no-color >"$work/out.txt" 2>&1
    local status=$?
    set -e
    tail -30 "$work/out.txt"

    if ! kill -0 "$pid" 2>/dev/null || ! curl -fsS --max-time 5 "http://127.0.0.1:$port/healthz" >/dev/null; then
        echo "schemathesis[$name]: spotd is not alive at the end of the run; its log tail:"
        tail -30 "$work/server.log"
        return 1
    fi
    if grep -q "request failed" "$work/server.log"; then
        echo "schemathesis[$name]: the server answered an internal error (500) during the run:"
        grep "request failed" "$work/server.log" | head -5
        return 1
    fi
    if [ "$status" -ne 0 ]; then
        if [ ! -s "$work/junit.xml" ]; then
            echo "schemathesis[$name]: exited $status and wrote no report"
            return 1
        fi
        local verdict
        verdict=$(python3 - "$work/junit.xml" "$KNOWN_CRASH" <<'PY'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
known = sys.argv[2]
failures = root.findall(".//failure")
errors = [(e.get("message") or "") + (e.text or "") for e in root.findall(".//error")]
if failures:
    print(f"findings: {len(failures)} failed check(s)")
elif not errors:
    print("findings: non-zero exit with no failure or error in the report")
elif all(known in e for e in errors):
    print("known-crash")
else:
    print("findings: " + next(e for e in errors if known not in e).strip().splitlines()[0][:300])
PY
)
        if [ "$verdict" != "known-crash" ]; then
            echo "schemathesis[$name]: $verdict (see $work/out.txt); server log tail:"
            tail -20 "$work/server.log"
            return 1
        fi
        echo "schemathesis[$name]: no check failed; schemathesis's own generator crashed on some cases ($KNOWN_CRASH)"
    fi
    echo "schemathesis[$name]: all checks passed, server alive"
}

run_pass plain "$BASE_PORT"
run_pass signed "$((BASE_PORT + 1))" --signed --webhook-secret "$SECRET"
echo "schemathesis: both passes passed"
