#!/usr/bin/env python3
"""Summarizes `perf script` output of spotd per benchmark phase: CPU used, thread groups, what the code was doing.

Usage: perf-summary.py PERF_SCRIPT_TEXT PHASES_FILE   (PHASES_FILE lines: "name start end", CLOCK_MONOTONIC seconds)
"""
import collections
import re
import sys

# Inclusive buckets: a sample counts in a bucket when one of its frames contains the key.
BUCKETS = [
    ("writer: placement transaction", "closure #1 in AppDatabase.place("),
    ("writer: notices + cordon", "AppDatabase.recordNotices"),
    ("writer: job submission", "AppDatabase.submitJob"),
    ("writer: node registration", "AppDatabase.registerNode"),
    ("writer: workflow pass (drains, requeues)", "AppDatabase.reconcile"),
    ("writer: all of its transactions", "WriteBatcher.drain"),
    ("  of which SQLite commit", "sqlite3VdbeHalt"),
    ("WAL pwrite (kernel)", "__x64_sys_pwrite64"),
    ("fsync/fdatasync (kernel)", "__x64_sys_fdatasync"),
    ("placement hints refresh (reader)", "PlacementHints"),
    ("request bodies: JSON reader", "JSONReader"),
    ("responses and events: JSON writer", "JSONWriter"),
    ("NIO: socket reads", "readFromSocket"),
    ("NIO: socket writes", "writeToSocket"),
    ("NIO: HTTP/1 parsing (llhttp)", "llhttp"),
    ("Hummingbird: router and middleware", "Router"),
    ("Swift: retain/release", "swift_re"),
    ("malloc/free", "malloc"),
]


def samples(path):
    block = []
    for line in open(path, errors="replace"):
        if line.strip():
            block.append(line.rstrip("\n"))
            continue
        if block:
            yield block
            block = []
    if block:
        yield block


def parse(block):
    head = re.match(r"\s*(\S.*?)\s+(\d+)\s+([\d.]+):", block[0])
    if not head:
        return None
    frames = []
    for line in block[1:]:
        parts = line.strip().split(" ", 1)
        frames.append(re.sub(r"\+0x[0-9a-f]+$", "", parts[1]) if len(parts) > 1 else parts[0])
    return head.group(1), float(head.group(3)), frames


def main():
    rows = [row for row in map(parse, samples(sys.argv[1])) if row]
    phases = [line.split() for line in open(sys.argv[2]) if line.strip()]
    rate = 999.0
    for name, start, end in phases:
        start, end = float(start), float(end)
        if name == "seed-pools" or end - start < 0.05:
            continue
        inside = [row for row in rows if start <= row[1] <= end]
        if not inside:
            continue
        seconds = end - start
        print(f"== {name}: {seconds:.2f} s, {len(inside)} samples = {len(inside) / rate / seconds:.2f} cores busy in spotd")
        threads = collections.Counter(comm for comm, _, _ in inside)
        print("   threads: " + ", ".join(f"{comm.strip()} {100 * n / len(inside):.0f}%" for comm, n in threads.most_common()))
        for label, key in BUCKETS:
            n = sum(1 for _, _, frames in inside if any(key in frame for frame in frames))
            if n:
                print(f"   {100 * n / len(inside):5.1f}%  {label}")
        leaves = collections.Counter(frames[0] for _, _, frames in inside if frames)
        print("   top leaf functions: " + "; ".join(f"{leaf[:60]} {100 * n / len(inside):.1f}%" for leaf, n in leaves.most_common(8)))
        print()


main()
