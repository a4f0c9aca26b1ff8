#!/usr/bin/env bash
# What `make test` and `make demo` need on this machine, set up if missing:
# system packages (Debian/Ubuntu, as root), the database servers and Redis
# started if installed but down, the test databases created. Elsewhere it
# says what is missing, and the tests that need it skip (fail under CI=true).
set -uo pipefail

say() { printf '%s\n' "--- $*"; }

# mysqlclient's build; the servers' clients; PostGIS, SpatiaLite, GDAL/GEOS for
# the GIS ENGINEs; PgBouncer; Debian's Python (its sqlite3 loads SpatiaLite);
# strace and tcpdump count system calls and bytes; memcached for the caches
# (libmemcached-dev and zlib1g-dev build pylibmc).
pg_major="$(ls /etc/postgresql 2>/dev/null | sort -n | tail -n 1)"
packages=(libmariadb-dev pkg-config mariadb-client postgresql-client
    "postgresql-${pg_major:-15}-postgis-3" libsqlite3-mod-spatialite gdal-bin pgbouncer
    python3 openssl strace tcpdump memcached libmemcached-dev zlib1g-dev)
if command -v dpkg >/dev/null; then
    missing=()
    for package in "${packages[@]}"; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            say "installing ${missing[*]}"
            apt-get update -qq >/dev/null
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
                || say "apt-get could not install them all; the tests that need them will say so"
        else
            say "missing system packages (install them as root): ${missing[*]}"
        fi
    fi
else
    say "not a Debian system: install by hand the equivalents of ${packages[*]}"
fi

mariadb_up() { mariadb -h127.0.0.1 -uroot -e 'SELECT 1' >/dev/null 2>&1; }
postgres_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; }
# Our own memcached, on a port and a Unix socket of its own (tests/caches).
memcached_port="${FORKSAFE_MEMCACHED_PORT:-11311}"
memcached_socket="${FORKSAFE_MEMCACHED_SOCKET:-/tmp/forksafe-memcached.sock}"
memcached_up() {  # $1: "127.0.0.1:PORT" or a socket path; asks for its version.
    python3 -c 'import socket, sys
where = sys.argv[1]
if where.startswith("/"):
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(2)
    sock.connect(where)
else:
    sock = socket.create_connection(where.rsplit(":", 1), timeout=2)
sock.sendall(b"version\r\n")
sys.exit(not sock.recv(64).startswith(b"VERSION"))' "$1" 2>/dev/null
}

if ! mariadb_up && [ -x /usr/sbin/mariadbd ]; then
    say "starting MariaDB"
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
fi
if ! postgres_up && [ -n "$pg_major" ]; then
    say "starting PostgreSQL $pg_major"
    pg_ctlcluster --skip-systemctl-redirect "$pg_major" main start
fi
if ! redis_up && command -v redis-server >/dev/null; then  # Celery's broker.
    say "starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
fi
if command -v memcached >/dev/null; then
    # memcached will not run as root without -u; it listens on TCP or on a
    # Unix socket, not both: one process each.
    user=(); [ "$(id -u)" = 0 ] && user=(-u nobody)
    if ! memcached_up "127.0.0.1:$memcached_port"; then
        say "starting memcached on 127.0.0.1:$memcached_port"
        memcached -d "${user[@]}" -l 127.0.0.1 -p "$memcached_port" -U 0 -m 64
    fi
    if ! memcached_up "$memcached_socket"; then
        say "starting memcached on $memcached_socket"
        memcached -d "${user[@]}" -s "$memcached_socket" -a 0777 -m 64
    fi
    for _ in $(seq 20); do
        memcached_up "127.0.0.1:$memcached_port" && memcached_up "$memcached_socket" && break
        sleep 0.5  # Waiting for servers this script started, not synchronising tests.
    done
fi
for _ in $(seq 60); do
    mariadb_up && postgres_up && break
    sleep 1  # Waiting for servers this script started, not synchronising tests.
done
if mariadb_up; then
    mariadb -h127.0.0.1 -uroot -e 'CREATE DATABASE IF NOT EXISTS test'
else
    say "MariaDB does not answer on 127.0.0.1:3306 (see FORKSAFE_MYSQL_* in CONTRIBUTING.rst)"
fi
if postgres_up; then
    psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1 \
        || psql -q -h 127.0.0.1 -U postgres -c 'CREATE DATABASE test'
else
    say "PostgreSQL does not answer on 127.0.0.1:5432 (see FORKSAFE_PG_* in CONTRIBUTING.rst)"
fi
for where in "127.0.0.1:$memcached_port" "$memcached_socket"; do
    memcached_up "$where" || say "memcached does not answer on $where (see FORKSAFE_MEMCACHED_* in tests/caches)"
done
exit 0
