#!/usr/bin/env bash
# One spotd-bench run with `perf record` attached to the server under test (the first one: seeding, placements,
# the notice burst), then a per-phase summary of where the server's CPU went.
# Usage: scripts/profile.sh [spotd-bench options]   Output: .build/profile/{bench,profile}.txt
# Needs perf (Debian: linux-perf) and python3. perf's samples are timed on CLOCK_MONOTONIC, the clock the bench
# stamps its phases with.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release >/dev/null
out=.build/profile
mkdir -p "$out"
SPOTD_BENCH_PHASES="$out/phases.txt" .build/release/spotd-bench "$@" >"$out/bench.txt" 2>&1 &
bench=$!
pid=""
until [ -n "$pid" ]; do pid=$(pgrep -P "$bench" -f "spotd serve" | head -1 || true); sleep 0.05; done
perf record -k CLOCK_MONOTONIC -F 999 -g -p "$pid" -o "$out/perf.data" >/dev/null 2>&1 || true
wait "$bench"
perf script -i "$out/perf.data" -F comm,tid,time,ip,sym 2>/dev/null | swift demangle --simplified >"$out/perf.txt"
python3 scripts/perf-summary.py "$out/perf.txt" "$out/phases.txt" >"$out/profile.txt"
cat "$out/profile.txt"
