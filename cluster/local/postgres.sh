#!/usr/bin/env bash
# A throw-away PostgreSQL for trying the cluster setup on one machine: databases `optuna`
# and `mlflow`, user `moonsweep` (no password), listening on 127.0.0.1 only.
#
#   cluster/local/postgres.sh start DIR PORT     # prints the two URLs
#   cluster/local/postgres.sh stop DIR
#
# PostgreSQL refuses to run as root: as root, the server runs as the `postgres` user.
set -euo pipefail
cmd=${1:?usage: postgres.sh start DIR PORT | stop DIR}
dir=${2:?usage: postgres.sh start DIR PORT | stop DIR}

bin() {  # a server program: on PATH, or in Debian's versioned folder
    command -v "$1" 2>/dev/null || ls /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | tail -1
}
as_owner=()
if [ "$(id -u)" = 0 ]; then as_owner=(runuser -u postgres --); fi

case "$cmd" in
start)
    port=${3:?usage: postgres.sh start DIR PORT}
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [ "$(id -u)" = 0 ]; then
        chown postgres "$dir"
        runuser -u postgres -- test -x "$dir" || {
            echo "error: the postgres user cannot reach $dir (a parent folder is private)" >&2
            exit 2
        }
    fi
    "${as_owner[@]}" "$(bin initdb)" -D "$dir/data" -U moonsweep -A trust -E UTF8 >/dev/null
    "${as_owner[@]}" "$(bin pg_ctl)" -D "$dir/data" -l "$dir/server.log" -w \
        -o "-h 127.0.0.1 -p $port -k $dir" start >/dev/null
    for db in optuna mlflow; do
        psql -h 127.0.0.1 -p "$port" -U moonsweep -d postgres -qc "CREATE DATABASE $db"
        echo "postgresql+psycopg://moonsweep@127.0.0.1:$port/$db"
    done
    ;;
stop)
    "${as_owner[@]}" "$(bin pg_ctl)" -D "$dir/data" -m fast stop >/dev/null
    ;;
*)
    echo "usage: postgres.sh start DIR PORT | stop DIR" >&2
    exit 2
    ;;
esac
