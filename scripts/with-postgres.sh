#!/usr/bin/env bash
# Runs a command beside a throwaway PostgreSQL cluster: initdb in a temporary folder, as an unprivileged user
# (`nobody` when run as root; PostgreSQL refuses root), listening on 127.0.0.1 at a free port. The command gets
# SPOTD_TEST_POSTGRES=postgres://spotd:spotd@127.0.0.1:PORT/postgres (the tests make one database per test from it)
# and SPOTD_TEST_POSTGRES_CTL (how the restart test restarts the server). The cluster is removed afterwards.
#   scripts/with-postgres.sh swift test        # the whole suite on PostgreSQL
set -euo pipefail
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
    echo "with-postgres: PostgreSQL is not installed (apt-get install postgresql)" >&2
    exit 1
fi
dir=$(mktemp -d /tmp/spotd-pg.XXXXXX)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_user=()
if [ "$(id -u)" = 0 ]; then
    chown nobody "$dir"
    as_user=(runuser -u nobody --)
fi
echo spotd >"$dir/password"
chmod 600 "$dir/password"
[ "$(id -u)" = 0 ] && chown nobody "$dir/password"
"${as_user[@]}" "$bindir/initdb" -D "$dir/data" -U spotd --pwfile="$dir/password" -A scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log"
# A throwaway cluster: fsync off (the tests kill spotd, never this server's machine); room for every test's connections.
ctl=("${as_user[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=1000 -c fsync=off -c full_page_writes=off -c shared_buffers=256MB")
cleanup() {
    "${ctl[@]}" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT
"${ctl[@]}" start >/dev/null
export SPOTD_TEST_POSTGRES="postgres://spotd:spotd@127.0.0.1:$port/postgres?sslmode=disable"
export SPOTD_TEST_POSTGRES_CTL="${ctl[*]}"
echo "with-postgres: PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') at 127.0.0.1:$port ($dir)" >&2
"$@"
