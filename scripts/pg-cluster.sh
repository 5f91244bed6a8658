#!/usr/bin/env bash
# A throwaway PostgreSQL cluster in a folder, run as an unprivileged user (`nobody` when called as root: PostgreSQL
# refuses root), listening on 127.0.0.1 only, with user spotd / password spotd.
#   pg-cluster.sh start DIR     initdb on first use, start on a free port (kept in DIR/port); prints the server URL
#   pg-cluster.sh stop DIR      fast shutdown (connections are cut, as in a real restart)
#   pg-cluster.sh remove DIR    stop at once and delete DIR
# SPOTD_PG_DURABLE=1 keeps fsync on (the benchmark's setting); tests run without it.
set -euo pipefail
command=${1:?usage: pg-cluster.sh start|stop|remove DIR}
dir=${2:?usage: pg-cluster.sh start|stop|remove DIR}
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
    echo "pg-cluster: PostgreSQL is not installed (apt-get install postgresql)" >&2
    exit 1
fi
as_user=()
[ "$(id -u)" = 0 ] && as_user=(runuser -u nobody --)
ctl() {
    local port
    port=$(cat "$dir/port")
    # Throwaway: fsync off unless asked (the tests kill spotd, never this machine); room for every test's connections.
    local durability="-c fsync=off -c full_page_writes=off"
    [ "${SPOTD_PG_DURABLE:-}" = 1 ] && durability=""
    "${as_user[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=1000 $durability" "$@"
}
case "$command" in
start)
    if [ ! -d "$dir/data" ]; then
        mkdir -p "$dir"
        [ "$(id -u)" = 0 ] && chown nobody "$dir"
        echo spotd >"$dir/password"
        [ "$(id -u)" = 0 ] && chown nobody "$dir/password"
        "${as_user[@]}" "$bindir/initdb" -D "$dir/data" -U spotd --pwfile="$dir/password" -A scram-sha-256 -E UTF8 \
            --locale=C.UTF-8 >"$dir/initdb.log"
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' >"$dir/port"
    fi
    ctl start >/dev/null
    echo "postgres://spotd:spotd@127.0.0.1:$(cat "$dir/port")/postgres?sslmode=disable"
    ;;
stop) ctl -m fast stop >/dev/null ;;
remove)
    [ -f "$dir/port" ] && ctl -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    ;;
*)
    echo "pg-cluster: unknown command $command" >&2
    exit 2
    ;;
esac
