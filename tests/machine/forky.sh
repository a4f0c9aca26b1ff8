#!/usr/bin/env bash
# The newest stack for `make test` where the machine lacks it: CPython 3.14,
# PostgreSQL 18, MariaDB 11.8, memcached and Redis from Debian's testing
# release ("forky"), in a chroot built once and reused, outside the clone
# (FORKSAFE_FORKY_ROOT, default /var/lib/django-forksafe/forky), so that a
# fresh clone (CI's) finds it. It shares the host's network: its servers
# listen on ports of their own, never the host's.
#
#   forky.sh build              build the chroot if missing or stale
#   forky.sh test [PYTEST ARGS] the newest-stack environment (py314-django61)
#                               in the chroot, as `make test` runs it
#   forky.sh tox ARGS...        build if needed, start the chroot's servers,
#                               run tox ARGS inside on a copy of this source
#                               tree, stop the servers
#   forky.sh benchmark ARGS...  tests.benchmarks.overhead ARGS on CPython 3.14,
#                               inside (make benchmark)
#   forky.sh run COMMAND...     the same, for any command
#   forky.sh env                the tox environment `make test` runs as the
#                               newest stack: py314-django61 where this
#                               machine has it all, else forky (the chroot)
#
# Needs Debian (apt-get, debootstrap) and root. Elsewhere it says how to get
# the newest stack and exits 0, so that `make test` goes on without it;
# under CI=true it fails.
set -euo pipefail

ROOT="${FORKSAFE_FORKY_ROOT:-/var/lib/django-forksafe/forky}"
MIRROR="${FORKSAFE_FORKY_MIRROR:-http://deb.debian.org/debian}"
# Ports of the chroot's servers: not the host's (3306, 5432, 6379, 11311).
MYSQL_PORT="${FORKSAFE_FORKY_MYSQL_PORT:-13306}"
PG_PORT="${FORKSAFE_FORKY_PG_PORT:-15432}"
REDIS_PORT="${FORKSAFE_FORKY_REDIS_PORT:-16379}"
MEMCACHED_PORT="${FORKSAFE_FORKY_MEMCACHED_PORT:-11312}"
PG_MAJOR=18
MYSQL_SOCKET=/var/lib/forksafe-mysqld/mysqld.sock  # Inside the chroot.
MAX_CONNECTIONS=400  # Each server's (see configure).
PYTHON=python3.14
# What the suite needs (as tests/machine/setup.sh on the host), the
# interpreter and its headers (the C extension, mysqlclient, uWSGI and
# pylibmc build from source), and valgrind for the benchmark. Changing this
# list rebuilds the chroot.
PACKAGES=(
    "$PYTHON" "$PYTHON-dev" "$PYTHON-venv" gcc libc6-dev pkg-config ca-certificates
    mariadb-server mariadb-client libmariadb-dev
    "postgresql-$PG_MAJOR" "postgresql-$PG_MAJOR-postgis-3" postgresql-client pgbouncer gdal-bin
    memcached libmemcached-dev zlib1g-dev redis-server redis-tools
    openssl strace tcpdump valgrind procps util-linux libcrypt-dev libsqlite3-mod-spatialite sqlite3
)
# The chroot's layout: changing it rebuilds the chroot; a changed PACKAGES
# list is installed into it.
STAMP_FILE=etc/django-forksafe-forky  # Under $ROOT, as the next.
STAMP="forky 1"
PACKAGES_FILE=etc/django-forksafe-forky-packages
# Older than this, the chroot's packages are upgraded (forky moves).
REFRESH_DAYS=14
TOX_VENV=/opt/forksafe-tox
SRC=/src

say() { printf '%s\n' "--- forky: $*" >&2; }

in_ci() { case "${CI:-}" in 1 | true | TRUE | True | yes) return 0 ;; esac; return 1; }

unavailable() {  # The newest stack cannot be had here: say how to get it.
    say "cannot provide the newest stack here: $*"
    say "to test it, run \`make test\` as root on Debian (it builds a forky chroot with debootstrap), or install"
    say "CPython 3.14, PostgreSQL $PG_MAJOR and MariaDB 11.8 and run \`tox -e py314-django61\` against them"
    say "(FORKSAFE_MYSQL_*, FORKSAFE_PG_*, FORKSAFE_REDIS_PORT, FORKSAFE_MEMCACHED*: see CONTRIBUTING)"
    if in_ci; then
        say "CI=true: the newest stack is required"
        exit 1
    fi
    say "skipped"
    exit 0
}

check_machine() {
    [ "$(id -u)" = 0 ] || unavailable "not root"
    command -v apt-get >/dev/null && [ -f /etc/debian_version ] || unavailable "not Debian"
    command -v unshare >/dev/null || unavailable "no unshare (util-linux)"
}

# Enter the chroot in a mount namespace of our own: the binds vanish with it
# and never propagate to the host's mounts.
in_root() {  # COMMAND... run inside the chroot, /proc, /dev and /sys bound.
    unshare --mount --propagation private -- bash -euc '
        root=$1; shift
        # The root a mount point, as a real one is (unshare --mount inside
        # needs it: tests/test_child_state.py).
        mount --bind "$root" "$root"
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        mount --rbind /sys "$root/sys"
        mount -t tmpfs tmpfs "$root/tmp"
        mount -t tmpfs tmpfs "$root/run"
        cp /etc/resolv.conf "$root/etc/resolv.conf"
        cp /etc/hosts "$root/etc/hosts"  # The name of this machine, which the tests resolve.
        exec chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" "$@"
    ' in_root "$ROOT" "$@"
}

# The host's CA bundle (a proxy's CA included) for pip inside: the one pip
# is told to trust here (PIP_CERT, as tests/machine/chroot.sh gives the
# host's to a chroot whose own lacks the proxy's CA), else the system's.
copy_certificates() {
    local bundle
    for bundle in "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt; do
        [ -n "$bundle" ] && [ -f "$bundle" ] || continue
        mkdir -p "$ROOT/etc/forksafe"
        cp "$bundle" "$ROOT/etc/forksafe/ca-certificates.crt"
        return 0
    done
}

# The servers' settings, written at every run (cheap; a change needs no
# rebuild).
configure() {
    # PostgreSQL: the cluster the package made, on our port, trusting
    # loopback, without TLS as on the host (the TLS tests start their own).
    [ "$(in_root pg_conftool -s "$PG_MAJOR" main show port)" = "$PG_PORT" ] \
        || in_root pg_conftool -s "$PG_MAJOR" main set port "$PG_PORT"
    # Room for the sessions Django leaves to the garbage collector: under
    # ASGI each request's sync_to_async thread opens one (CONN_MAX_AGE=600),
    # closed only when the collector frees it ("deleted while still open").
    # On CPython 3.14, tests/test_programs.py's ASGI tests (400 requests, 3
    # workers) went past PostgreSQL's default 100 about one run in four, even
    # alone ("too many clients already", HTTP 500).
    printf "listen_addresses = '127.0.0.1'\nssl = off\nmax_connections = $MAX_CONNECTIONS\n" \
        >"$ROOT/etc/postgresql/$PG_MAJOR/main/conf.d/forksafe.conf"
    printf 'local all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n' \
        >"$ROOT/etc/postgresql/$PG_MAJOR/main/pg_hba.conf"
    # MariaDB on our port; root with an empty password over TCP, without TLS
    # (11.4 and later turn it on by default), as on the host. Its Unix socket
    # outside /run, which is each run's own: a run that finds the server
    # another run started reaches it there too (the tests connect through
    # the path the server gives, SELECT @@socket).
    cat >"$ROOT/etc/mysql/mariadb.conf.d/99-forksafe.cnf" <<CNF
[client-server]
socket = $MYSQL_SOCKET
[mysqld]
port = $MYSQL_PORT
bind-address = 127.0.0.1
skip-log-bin
skip-ssl
max_connections = $MAX_CONNECTIONS
[client]
port = $MYSQL_PORT
CNF
}

install_packages() {
    in_root bash -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null' \
        install "${PACKAGES[@]}"
    echo "${PACKAGES[*]}" >"$ROOT/$PACKAGES_FILE"
}

build() {
    check_machine
    up_to_date && return 0
    mkdir -p "$(dirname "$ROOT")"
    # One build at a time (tox runs environments in parallel); the lock is
    # let go once built, not held by the servers and tests started after.
    exec 9>"$(dirname "$ROOT")/.forky.lock"
    flock 9
    build_locked
    exec 9>&-
}

up_to_date() {
    [ -f "$ROOT/$STAMP_FILE" ] && [ "$(cat "$ROOT/$STAMP_FILE")" = "$STAMP" ] \
        && [ -z "$(find "$ROOT/$STAMP_FILE" -mtime +"$REFRESH_DAYS")" ] \
        && [ "$(cat "$ROOT/$PACKAGES_FILE" 2>/dev/null)" = "${PACKAGES[*]}" ]
}

build_locked() {
    if [ -f "$ROOT/$STAMP_FILE" ] && [ "$(cat "$ROOT/$STAMP_FILE")" = "$STAMP" ]; then
        if [ -n "$(find "$ROOT/$STAMP_FILE" -mtime +"$REFRESH_DAYS")" ]; then
            say "upgrading the chroot's packages (built more than $REFRESH_DAYS days ago)"
            in_root bash -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -y -qq upgrade >/dev/null'
            touch "$ROOT/$STAMP_FILE"
        fi
        if [ "$(cat "$ROOT/$PACKAGES_FILE" 2>/dev/null)" != "${PACKAGES[*]}" ]; then
            say "installing the chroot's new packages"
            install_packages
        fi
        return 0
    fi
    local started=$SECONDS
    say "building the chroot in $ROOT (once; a few minutes)"
    if ! command -v debootstrap >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    fi
    rm -rf "$ROOT.new"
    mkdir -p "$ROOT.new"
    debootstrap --variant=minbase forky "$ROOT.new" "$MIRROR" /usr/share/debootstrap/scripts/sid >/dev/null
    local final=$ROOT
    ROOT=$ROOT.new
    # Servers are started by forky.sh, not by the packages' scripts.
    printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
    chmod +x "$ROOT/usr/sbin/policy-rc.d"
    # The mirror's snapshot of a moving release can be older than its
    # Valid-Until (as debootstrap, which does not check it, took it).
    echo 'Acquire::Check-Valid-Until "false";' >"$ROOT/etc/apt/apt.conf.d/99forksafe"
    copy_certificates
    install_packages
    configure
    in_root bash -c "$PYTHON -m venv $TOX_VENV && $TOX_VENV/bin/pip install -q --cert /etc/forksafe/ca-certificates.crt tox"
    echo "$STAMP" >"$ROOT/$STAMP_FILE"
    ROOT=$final
    rm -rf "$ROOT"
    mv "$ROOT.new" "$ROOT"
    say "built in $((SECONDS - started)) s"
}

# Inside the chroot: start the servers (if not answering already), create
# root's TCP login on MariaDB, wait until all answer.
start_servers='
set -eu
# MariaDB 11.4 and later clients ask for TLS by default, and refuse a server
# without it (ours, skip-ssl) even over the Unix socket: --skip-ssl, as
# tests/dbconfig.py does.
mariadb_up() { mariadb --skip-ssl -h127.0.0.1 -P"$MYSQL_PORT" -uroot -e "SELECT 1" >/dev/null 2>&1; }
mariadb_local() { mariadb --skip-ssl --protocol=socket -uroot "$@"; }
pg_up() { pg_isready -q -h 127.0.0.1 -p "$PG_PORT"; }
redis_up() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1; }
memcached_up() { printf "version\r\n" | timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$MEMCACHED_PORT; cat >&3; head -c 7 <&3" 2>/dev/null | grep -q VERSION; }
# Only the servers started here are stopped at the end: another run in the
# chroot (the benchmark, a second tox) may be using those already up.
if ! mariadb_up; then
    mkdir -p /run/mysqld "$(dirname "$MYSQL_SOCKET")" && chown mysql:mysql /run/mysqld "$(dirname "$MYSQL_SOCKET")"
    # By pid file: the mariadbd of the host, same path, is visible in /proc.
    start-stop-daemon --start --background --make-pidfile --pidfile /run/mysqld/forky.pid \
        --exec /usr/sbin/mariadbd -- --user=mysql
    started="$started mariadb"
fi
if ! pg_up; then
    pg_ctlcluster --skip-systemctl-redirect "$PG_MAJOR" main start
    started="$started postgresql"
fi
if ! redis_up; then
    redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no >/dev/null
    started="$started redis"
fi
if ! memcached_up; then
    memcached -d -u nobody -P /tmp/memcached-tcp.pid -l 127.0.0.1 -p "$MEMCACHED_PORT" -U 0 -m 64
fi
# The Unix socket is in this run s own /tmp.
memcached -d -u nobody -P /tmp/memcached-unix.pid -s /tmp/forksafe-memcached.sock -a 0777 -m 64
for _ in $(seq 120); do
    # Waiting for the servers just started, bounded; not synchronising tests.
    { mariadb_up || mariadb_local -e "SELECT 1" >/dev/null 2>&1; } && pg_up && redis_up && memcached_up && break
    sleep 0.5
done
case "$started" in *mariadb*)  # Root over TCP with an empty password, as on the host.
    mariadb_local -e "ALTER USER root@localhost IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD(\"\")" \
        || { echo "MariaDB: cannot let root in over TCP (the server started here does not answer on its socket)" >&2; exit 1; }
esac
mariadb_up || { echo "MariaDB does not answer on $MYSQL_PORT" >&2; exit 1; }
pg_up || { echo "PostgreSQL does not answer on $PG_PORT" >&2; exit 1; }
# The suite s role, tests/dbconfig.py s defaults (as tests/machine/setup.sh
# makes it on the host), through each server s local admin access, by the run
# that started the server (another run s /run, and PostgreSQL s socket there, are its own).
case "$started" in *mariadb*)
    for host in localhost 127.0.0.1 ::1; do
        mariadb_local -e "CREATE USER IF NOT EXISTS \"forksafe\"@\"$host\"
            IDENTIFIED BY \"forksafe\"; GRANT ALL PRIVILEGES ON *.* TO \"forksafe\"@\"$host\";" \
            || { echo "MariaDB: cannot create the role forksafe" >&2; exit 1; }
    done
esac
case "$started" in *postgresql*)
    pg_admin() { runuser -u postgres -- psql -q -p "$PG_PORT" -d postgres "$@"; }
    [ "$(pg_admin -tAc "SELECT count(*) FROM pg_roles WHERE rolname = \$\$forksafe\$\$")" = 1 ] \
        || pg_admin -c "CREATE ROLE forksafe LOGIN SUPERUSER PASSWORD \$\$forksafe\$\$" \
        || { echo "PostgreSQL: cannot create the role forksafe" >&2; exit 1; }
esac
redis_up || { echo "Redis does not answer on $REDIS_PORT" >&2; exit 1; }
memcached_up || { echo "memcached does not answer on $MEMCACHED_PORT" >&2; exit 1; }
'

stop_servers='
set +e  # Each server stopped whatever became of the others (start_servers set -e).
# By its pid file if it does not take a shutdown: a server left running would
# hold the port, and its socket be out of the next run s reach.
case "$started" in *mariadb*)
    mariadb-admin --skip-ssl --protocol=socket -uroot shutdown 2>/dev/null \
        || start-stop-daemon --stop --quiet --pidfile /run/mysqld/forky.pid --retry TERM/60/KILL/5 ;;
esac
case "$started" in *postgresql*) pg_ctlcluster --skip-systemctl-redirect "$PG_MAJOR" main stop -m fast 2>/dev/null ;; esac
case "$started" in *redis*) redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown nosave 2>/dev/null ;; esac
for pidfile in /tmp/memcached-tcp.pid /tmp/memcached-unix.pid; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null
done
true
'

# The source tree, copied (not bound: the host's tox builds in it at the same
# time) without what the host made in it.
# One copy per run, removed after it: runs at once (the tests, the
# benchmark) keep their own working directories.
copy_source() {
    local here
    here="$(cd "$(dirname "$0")/../.." && pwd)"
    mkdir -p "$ROOT$SRC"
    source_copy="$(mktemp -d "$ROOT$SRC/run-XXXXXX")"
    chmod 755 "$source_copy"
    tar -C "$here" --exclude=./.git --exclude=./.tox --exclude=./.venv --exclude=./build --exclude=./dist \
        --exclude='*.egg-info' --exclude='__pycache__' --exclude='*.so' -cf - . | tar -C "$source_copy" -xf -
}

run() {  # COMMAND...: inside the chroot, in the source tree, servers up.
    build
    configure
    copy_source
    copy_certificates
    # The servers are started here and stopped at the end (/run and /tmp are
    # fresh: no stale pid file or socket from an earlier run).
    local settings=(
        MYSQL_PORT="$MYSQL_PORT" MYSQL_SOCKET="$MYSQL_SOCKET" PG_PORT="$PG_PORT" REDIS_PORT="$REDIS_PORT" MEMCACHED_PORT="$MEMCACHED_PORT"
        PG_MAJOR="$PG_MAJOR"
    )
    local forward=(
        CI="${CI:-}" PYTEST_ADDOPTS="${PYTEST_ADDOPTS:-}"
        FORKSAFE_TEST_DATABASE_PREFIX="${FORKSAFE_TEST_DATABASE_PREFIX:-forksafe}"
        FORKSAFE_MYSQL_PORT="$MYSQL_PORT" FORKSAFE_PG_PORT="$PG_PORT" FORKSAFE_REDIS_PORT="$REDIS_PORT"
        FORKSAFE_MEMCACHED="127.0.0.1:$MEMCACHED_PORT" FORKSAFE_MEMCACHED_SOCKET=/tmp/forksafe-memcached.sock
        PIP_CERT=/etc/forksafe/ca-certificates.crt SSL_CERT_FILE=/etc/forksafe/ca-certificates.crt
        PIP_DISABLE_PIP_VERSION_CHECK=1
    )
    local status=0 inside=${source_copy#"$ROOT"}
    in_root env "${settings[@]}" "${forward[@]}" bash -c "
        started=''
        trap '$stop_servers' EXIT
        $start_servers
        cd $inside
        \"\$@\"
    " run "$@" || status=$?
    rm -rf "$source_copy"
    return $status
}

# tox's packaging environment (.pkg) outlives the clone in the chroot: one
# made for an earlier checkout hands its prepared metadata to the next build,
# which nests it in the wheel (pip: "invalid metadata entry 'name'"). Each
# run builds the package in a new one.
FRESH_PACKAGE_ENV='rm -rf /var/tmp/forksafe-tox/.pkg && exec "$@"'

case "${1:-}" in
build)
    build
    ;;
test)  # [PYTEST ARGS...]: the newest-stack environment, inside.
    shift
    run bash -c "$FRESH_PACKAGE_ENV" test "$TOX_VENV/bin/tox" run --workdir /var/tmp/forksafe-tox \
        -e py314-django61 ${1+--} "$@"
    ;;
benchmark)  # [ARGS...]: tests.benchmarks.overhead inside, on CPython 3.14.
    shift
    run bash -euc '
        venv=/var/tmp/forksafe-benchmark
        [ -x $venv/bin/python ] || '"$PYTHON"' -m venv $venv
        $venv/bin/pip install -q "Django>=6.1" "psycopg[binary]" mysqlclient gunicorn pytest pylibmc pymemcache
        $venv/bin/pip install -q --no-deps --force-reinstall .
        cd "$($venv/bin/python -c "import tests; print(tests.IMPORT_PATH)")"
        PATH=$venv/bin:$PATH PYTHONUNBUFFERED=1 $venv/bin/python -m tests.benchmarks.overhead "$@"
    ' benchmark "$@"
    ;;
tox)
    shift
    run bash -c "$FRESH_PACKAGE_ENV" tox "$TOX_VENV/bin/tox" --workdir /var/tmp/forksafe-tox "$@"
    ;;
run)
    shift
    run "$@"
    ;;
env)
    # This machine's own CPython 3.14 and servers, if it has them all.
    if command -v "$PYTHON" >/dev/null \
        && pg_isready -q -h "${FORKSAFE_PG_HOST:-127.0.0.1}" -p "${FORKSAFE_PG_PORT:-5432}" 2>/dev/null \
        && [ "$(psql -h "${FORKSAFE_PG_HOST:-127.0.0.1}" -p "${FORKSAFE_PG_PORT:-5432}" -U "${FORKSAFE_PG_USER:-postgres}" \
            -d postgres -tAc 'SHOW server_version_num' 2>/dev/null || echo 0)" -ge "${PG_MAJOR}0000" ] \
        && mariadb --skip-ssl -h "${FORKSAFE_MYSQL_HOST:-127.0.0.1}" -P "${FORKSAFE_MYSQL_PORT:-3306}" -u "${FORKSAFE_MYSQL_USER:-root}" \
            -N -e 'SELECT VERSION()' 2>/dev/null | grep -qE '^(11\.([89]|[1-9][0-9])|1[2-9]\.)'; then
        echo py314-django61
    else
        echo forky
    fi
    ;;
*)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
