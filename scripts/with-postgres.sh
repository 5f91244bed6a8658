#!/usr/bin/env bash
# Runs a command beside a throwaway PostgreSQL cluster (scripts/pg-cluster.sh: a temporary folder, an unprivileged
# user, 127.0.0.1 at a free port). The command gets SPOTD_TEST_POSTGRES, the server's URL; the tests make one
# database per test from it. The cluster is removed afterwards.
#   scripts/with-postgres.sh swift test        # the whole suite on PostgreSQL
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=$(mktemp -d /tmp/spotd-pg.XXXXXX)
rmdir "$dir"
trap '"$here/pg-cluster.sh" remove "$dir"' EXIT
SPOTD_TEST_POSTGRES=$("$here/pg-cluster.sh" start "$dir")
export SPOTD_TEST_POSTGRES
echo "with-postgres: $SPOTD_TEST_POSTGRES ($dir)" >&2
"$@"
