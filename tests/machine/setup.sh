#!/usr/bin/env bash
# The machine `make test` and `make demo` need, on Debian 12 or 13 (or
# Ubuntu), a full system or a container or chroot without systemd:
#
#   setup.sh          everything the test suite needs; stops with a non-zero
#                     status naming the step that failed (make machine, make test)
#   setup.sh demo     what `make demo` can use (MariaDB, PostgreSQL and their
#                     drivers' build), best effort: says what it skipped and the
#                     one line that adds it, and never fails
#   setup.sh venv     python3-venv, for `python3 -m venv` (Debian leaves it out)
#
# As root it installs the system packages (servers included), starts the
# servers that are installed but down, directly (no systemd), on the ports of
# FORKSAFE_MYSQL_PORT, FORKSAFE_PG_PORT, FORKSAFE_REDIS_PORT and
# FORKSAFE_MEMCACHED_PORT / FORKSAFE_MEMCACHED_SOCKET, and creates the test
# role (FORKSAFE_MYSQL_USER / _PASSWORD, FORKSAFE_PG_USER / _PASSWORD) and the
# `test` database through each server's default local admin access: MariaDB's
# root over the Unix socket (unix_socket), PostgreSQL's postgres user over the
# Unix socket (peer). It changes no server's authentication settings. A server
# on another host (FORKSAFE_*_HOST) is only checked: create the role there
# yourself (CONTRIBUTING.rst says how).
set -uo pipefail

mode="${1:-all}"
case "$mode" in all | demo | venv) ;; *) echo "usage: $0 [demo|venv]" >&2; exit 2 ;; esac

# The defaults are tests/dbconfig.py's.
mysql_host="${FORKSAFE_MYSQL_HOST:-127.0.0.1}"
mysql_port="${FORKSAFE_MYSQL_PORT:-3306}"
mysql_user="${FORKSAFE_MYSQL_USER:-forksafe}"
mysql_password="${FORKSAFE_MYSQL_PASSWORD-forksafe}"
pg_host="${FORKSAFE_PG_HOST:-127.0.0.1}"
pg_port="${FORKSAFE_PG_PORT:-5432}"
pg_user="${FORKSAFE_PG_USER:-forksafe}"
pg_password="${FORKSAFE_PG_PASSWORD-forksafe}"
redis_port="${FORKSAFE_REDIS_PORT:-6379}"
# tests/caches reads FORKSAFE_MEMCACHED ("host:port"); its port, or
# FORKSAFE_MEMCACHED_PORT, is the one started here.
memcached="${FORKSAFE_MEMCACHED:-127.0.0.1:${FORKSAFE_MEMCACHED_PORT:-11311}}"
memcached_port="${memcached##*:}"
memcached_socket="${FORKSAFE_MEMCACHED_SOCKET:-/tmp/forksafe-memcached.sock}"
database=test
make_target=machine; [ "$mode" = demo ] && make_target=demo

say() { printf '%s\n' "--- $*"; }
skipped=()
# A step that cannot be done: fatal for the test suite, a skip for the demo.
fail() {  # $1: the step, $2: why, $3: the one line that fixes it
    if [ "$mode" != demo ]; then
        printf '%s\n' "--- FAILED: $1: $2" "    fix: $3" "    (set-up stopped here: fix it, then run make again)" >&2
        exit 1
    fi
    skipped+=("$1: $2; to add it: $3")
}
is_root() { [ "$(id -u)" = 0 ]; }
is_local() { case "$1" in 127.0.0.1 | localhost | ::1) return 0 ;; *) return 1 ;; esac; }
# Waiting for servers this script started (not synchronising tests), bounded.
wait_for() {  # $1: what, $2...: the check
    local what="$1"; shift
    for _ in $(seq 120); do "$@" && return 0; sleep 0.5; done
    return 1
}
port_open() {  # $1 host, $2 port
    python3 -c 'import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()' \
        "$1" "$2" 2>/dev/null
}
sql_name() { [[ "$1" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; }

# --- system packages -------------------------------------------------------
# Debian does not start services in a container or chroot without systemd,
# but a package's postinst would try (and take the default ports): no start
# while we install, as in Debian's images (policy-rc.d).
apt_install() {  # $@: packages; returns apt-get's status
    local created=""
    if [ ! -d /run/systemd/system ] && [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && created=1
    fi
    local status=0
    if [ -z "${apt_updated:-}" ]; then
        apt-get update -qq >/tmp/forksafe-apt.log 2>&1 || status=$?
        apt_updated=1
    fi
    [ "$status" = 0 ] && { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" \
        >>/tmp/forksafe-apt.log 2>&1 || status=$?; }
    [ -n "$created" ] && rm -f /usr/sbin/policy-rc.d
    return "$status"
}
missing_of() {  # $@: packages; prints those not installed
    local package
    for package in "$@"; do
        [ "$(dpkg-query -W -f '${Status}' "$package" 2>/dev/null)" = "install ok installed" ] || printf '%s\n' "$package"
    done
}
need_packages() {  # $1: the step, then the packages
    local step="$1"; shift
    command -v dpkg-query >/dev/null || { fail "$step" "not a Debian system" "install the equivalents of: $*"; return 1; }
    local missing
    mapfile -t missing < <(missing_of "$@")
    [ ${#missing[@]} = 0 ] && return 0
    local line="apt-get install -y ${missing[*]}"
    if ! is_root; then
        fail "$step" "missing ${missing[*]}" "sudo $line"
        return 1
    fi
    say "$step: installing ${missing[*]}"
    if ! apt_install "${missing[@]}"; then
        tail -n 20 /tmp/forksafe-apt.log >&2
        fail "$step" "apt-get could not install ${missing[*]} (log: /tmp/forksafe-apt.log)" "$line"
        return 1
    fi
}

if [ "$mode" = venv ]; then
    need_packages "python3-venv" python3-venv || exit 1
    exit 0
fi

# Building the C extension and the drivers from source (mysqlclient against
# libmariadb, pylibmc against libmemcached, uWSGI).
build=(gcc libc6-dev python3-dev python3-venv pkg-config libmariadb-dev)
servers=(mariadb-server mariadb-client postgresql postgresql-client)
if [ "$mode" = demo ]; then
    need_packages "the C extension's and mysqlclient's build" "${build[@]}"
    need_packages "MariaDB and PostgreSQL" "${servers[@]}"
else
    # The GIS ENGINEs (PostGIS, SpatiaLite, GDAL and GEOS), PgBouncer, the TLS
    # servers' certificates, strace and tcpdump (system calls and bytes),
    # valgrind (the benchmark), Redis (Celery's, RQ's and Huey's broker),
    # memcached and what pylibmc builds against, Debian's Python (its sqlite3
    # loads SpatiaLite).
    need_packages "system packages" "${build[@]}" "${servers[@]}" redis-server memcached libmemcached-dev zlib1g-dev \
        pgbouncer libsqlite3-mod-spatialite gdal-bin openssl strace tcpdump valgrind procps python3
    # PostGIS for the PostgreSQL just installed, whichever version that is.
    pg_version="$(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -n 1)"
    [ -n "$pg_version" ] || fail "PostGIS" "PostgreSQL's server is not installed" "apt-get install -y postgresql"
    need_packages "PostGIS" "postgresql-$pg_version-postgis-3"
fi

# --- MariaDB -----------------------------------------------------------------
mysql_socket=/run/mysqld/mysqld.sock
# --skip-ssl: MariaDB 11.4's client asks for TLS by default, and the server
# started below offers none (the hazards' controls expect plaintext).
mysql_as_user() {
    MYSQL_PWD="$mysql_password" mariadb --no-defaults --skip-ssl -h "$mysql_host" -P "$mysql_port" --protocol=tcp -u "$mysql_user" "$@"
}
# root through the Unix socket (unix_socket authentication, Debian's
# default), if that socket is the server on our port; else root over TCP
# with no password (a developer's machine set up that way).
mysql_admin() {
    if [ -S "$mysql_socket" ] && [ "$(mariadb --no-defaults --skip-ssl -S "$mysql_socket" -uroot -N -e 'SELECT @@port' 2>/dev/null)" = "$mysql_port" ]; then
        mariadb --no-defaults --skip-ssl -S "$mysql_socket" -uroot "$@"
    else
        MYSQL_PWD="" mariadb --no-defaults --skip-ssl -h "$mysql_host" -P "$mysql_port" --protocol=tcp -uroot "$@"
    fi
}
start_mariadb() {
    local server=/usr/sbin/mariadbd log="/var/log/mysql/forksafe-$mysql_port.log"
    [ -x "$server" ] || { fail "MariaDB" "no server on $mysql_host:$mysql_port and mariadb-server is not installed" \
        "apt-get install -y mariadb-server"; return 1; }
    is_root || { fail "MariaDB" "no server on $mysql_host:$mysql_port" "sudo make $make_target"; return 1; }
    install -d -o mysql -g mysql /run/mysqld /var/log/mysql
    if [ ! -d /var/lib/mysql/mysql ]; then
        say "MariaDB: creating its data directory"
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db >"$log" 2>&1 \
            || { tail -n 20 "$log" >&2; fail "MariaDB" "mariadb-install-db failed (log: $log)" "see the log"; return 1; }
    fi
    # --skip-ssl: plaintext sessions, as the hazards' controls expect
    # (MariaDB 11.4 and later offer TLS by default, and clients take it); the
    # TLS tests start a TLS server of their own.
    say "MariaDB: starting it on 127.0.0.1:$mysql_port"
    start-stop-daemon --start --background --oknodo --pidfile "/run/mysqld/forksafe-$mysql_port.pid" \
        --exec "$server" -- --user=mysql --bind-address=127.0.0.1 --port="$mysql_port" --socket="$mysql_socket" \
        --pid-file="/run/mysqld/forksafe-$mysql_port.pid" --log-error="$log" --skip-ssl
    wait_for "MariaDB" port_open 127.0.0.1 "$mysql_port" \
        || { tail -n 20 "$log" >&2; fail "MariaDB" "it did not start (log: $log)" "see the log"; return 1; }
}
setup_mariadb() {
    if mysql_as_user -e "CREATE DATABASE IF NOT EXISTS \`$database\`" 2>/dev/null; then
        return 0  # The role exists and may create databases: nothing to do.
    fi
    if ! port_open "$mysql_host" "$mysql_port"; then
        is_local "$mysql_host" || { fail "MariaDB" "no server at $mysql_host:$mysql_port" "start it, or set FORKSAFE_MYSQL_HOST/PORT"; return 1; }
        start_mariadb || return 1
        mysql_as_user -e "CREATE DATABASE IF NOT EXISTS \`$database\`" 2>/dev/null && return 0
    fi
    is_local "$mysql_host" || { fail "MariaDB" "$mysql_user cannot log in at $mysql_host:$mysql_port" \
        "create the role there (CONTRIBUTING.rst, Servers), or set FORKSAFE_MYSQL_USER/PASSWORD"; return 1; }
    sql_name "$mysql_user" && [[ "$mysql_password" != *"'"* ]] && [ "$mysql_user" != root ] \
        || { fail "MariaDB" "will not create or change the role '$mysql_user'" "set FORKSAFE_MYSQL_USER to a plain name other than root"; return 1; }
    say "MariaDB: creating the role $mysql_user and the database $database"
    local sql="" host
    # 'localhost' for the Unix socket and for 127.0.0.1 when the server
    # resolves names; '127.0.0.1' and '::1' when it skips name resolution.
    # ALL on *.*: the suite creates a database per environment and worker.
    for host in localhost 127.0.0.1 ::1; do
        sql+="CREATE USER IF NOT EXISTS '$mysql_user'@'$host' IDENTIFIED BY '$mysql_password';"
        sql+="ALTER USER '$mysql_user'@'$host' IDENTIFIED BY '$mysql_password';"
        sql+="GRANT ALL PRIVILEGES ON *.* TO '$mysql_user'@'$host';"
    done
    sql+="CREATE DATABASE IF NOT EXISTS \`$database\`;"
    local error
    error="$(mysql_admin -e "$sql" 2>&1)" \
        || { fail "MariaDB" "no admin access to create the role ($error)" "run as root, or create the role yourself (CONTRIBUTING.rst)"; return 1; }
    mysql_as_user -e 'SELECT 1' >/dev/null 2>&1 \
        || { fail "MariaDB" "$mysql_user still cannot log in at $mysql_host:$mysql_port" "see CONTRIBUTING.rst, Servers"; return 1; }
}

# --- PostgreSQL --------------------------------------------------------------
pg_as_user() {
    PGPASSWORD="$pg_password" psql -X -q -h "$pg_host" -p "$pg_port" -U "$pg_user" -d postgres -v ON_ERROR_STOP=1 "$@"
}
# postgres over the Unix socket (peer authentication, Debian's default);
# else postgres over TCP (a developer's machine that trusts it).
pg_admin() {
    if is_root && [ -S "/var/run/postgresql/.s.PGSQL.$pg_port" ]; then
        (cd / && runuser -u postgres -- psql -X -q -h /var/run/postgresql -p "$pg_port" -d postgres -v ON_ERROR_STOP=1 "$@")
    else
        PGPASSWORD="" psql -X -q -h "$pg_host" -p "$pg_port" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"
    fi
}
start_postgresql() {
    command -v pg_lsclusters >/dev/null || { fail "PostgreSQL" "no server on $pg_host:$pg_port and postgresql is not installed" \
        "apt-get install -y postgresql"; return 1; }
    is_root || { fail "PostgreSQL" "no server on $pg_host:$pg_port" "sudo make $make_target"; return 1; }
    # The cluster configured for our port (Debian's main one on 5432), else
    # a cluster of our own on it, with Debian's default authentication.
    local version name
    read -r version name < <(pg_lsclusters -h | awk -v port="$pg_port" '$3 == port {print $1, $2; exit}')
    if [ -z "${version:-}" ]; then
        version="$(ls /usr/lib/postgresql | sort -n | tail -n 1)"
        name=forksafe
        say "PostgreSQL: creating the cluster $version/$name on port $pg_port"
        pg_createcluster --port "$pg_port" "$version" "$name" >/dev/null \
            || { fail "PostgreSQL" "pg_createcluster failed" "see its output above"; return 1; }
    fi
    say "PostgreSQL: starting the cluster $version/$name on port $pg_port"
    pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start \
        || { fail "PostgreSQL" "the cluster $version/$name did not start (log: /var/log/postgresql/)" "see the log"; return 1; }
    wait_for "PostgreSQL" port_open 127.0.0.1 "$pg_port" || { fail "PostgreSQL" "it does not listen on $pg_port" "see /var/log/postgresql/"; return 1; }
}
setup_postgresql() {
    if pg_as_user -tAc "SELECT 1 FROM pg_database WHERE datname = '$database'" 2>/dev/null | grep -q 1; then
        return 0
    fi
    if ! port_open "$pg_host" "$pg_port"; then
        is_local "$pg_host" || { fail "PostgreSQL" "no server at $pg_host:$pg_port" "start it, or set FORKSAFE_PG_HOST/PORT"; return 1; }
        start_postgresql || return 1
    fi
    if ! pg_as_user -c 'SELECT 1' >/dev/null 2>&1; then
        is_local "$pg_host" || { fail "PostgreSQL" "$pg_user cannot log in at $pg_host:$pg_port" \
            "create the role there (CONTRIBUTING.rst, Servers), or set FORKSAFE_PG_USER/PASSWORD"; return 1; }
        sql_name "$pg_user" && [[ "$pg_password" != *"'"* ]] && [ "$pg_user" != postgres ] \
            || { fail "PostgreSQL" "will not create or change the role '$pg_user'" "set FORKSAFE_PG_USER to a plain name other than postgres"; return 1; }
        say "PostgreSQL: creating the role $pg_user"
        # SUPERUSER: the GIS tests create the postgis extension, which only a
        # superuser may; the suite creates and drops databases of its own.
        local error
        error="$(pg_admin -c "DO \$\$ BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '$pg_user')
            THEN ALTER ROLE \"$pg_user\" LOGIN SUPERUSER PASSWORD '$pg_password';
            ELSE CREATE ROLE \"$pg_user\" LOGIN SUPERUSER PASSWORD '$pg_password'; END IF; END \$\$" 2>&1)" \
            || { fail "PostgreSQL" "no admin access to create the role ($error)" "run as root, or create the role yourself (CONTRIBUTING.rst)"; return 1; }
        pg_as_user -c 'SELECT 1' >/dev/null 2>&1 \
            || { fail "PostgreSQL" "$pg_user still cannot log in at $pg_host:$pg_port" "see CONTRIBUTING.rst, Servers"; return 1; }
    fi
    pg_as_user -tAc "SELECT 1 FROM pg_database WHERE datname = '$database'" | grep -q 1 && return 0
    say "PostgreSQL: creating the database $database"
    pg_as_user -c "CREATE DATABASE \"$database\"" >/dev/null \
        || { fail "PostgreSQL" "could not create the database $database" "see the error above"; return 1; }
}

# --- Redis and memcached -------------------------------------------------------
redis_up() { redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null | grep -q PONG; }
setup_redis() {
    redis_up && return 0
    command -v redis-server >/dev/null || { fail "Redis" "redis-server is not installed" "apt-get install -y redis-server"; return 1; }
    say "Redis: starting it on 127.0.0.1:$redis_port"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
        --dir /tmp --logfile "/tmp/forksafe-redis-$redis_port.log" \
        && wait_for "Redis" redis_up || { fail "Redis" "it did not start (log: /tmp/forksafe-redis-$redis_port.log)" "see the log"; return 1; }
}
memcached_up() {  # $1: "host:port" or a socket path; asks for its version.
    python3 -c 'import socket, sys
where = sys.argv[1]
if where.startswith("/"):
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(2)
    sock.connect(where)
else:
    host, _, port = where.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=2)
sock.sendall(b"version\r\n")
sys.exit(not sock.recv(64).startswith(b"VERSION"))' "$1" 2>/dev/null
}
setup_memcached() {
    command -v memcached >/dev/null || { fail "memcached" "it is not installed" "apt-get install -y memcached"; return 1; }
    # memcached will not run as root without -u; it listens on TCP or on a
    # Unix socket, not both: one process each.
    local user=(); is_root && user=(-u nobody)
    if ! memcached_up "$memcached"; then
        say "memcached: starting it on $memcached"
        memcached -d "${user[@]}" -l "${memcached%:*}" -p "$memcached_port" -U 0 -m 64
    fi
    if ! memcached_up "$memcached_socket"; then
        say "memcached: starting it on $memcached_socket"
        rm -f "$memcached_socket"
        memcached -d "${user[@]}" -s "$memcached_socket" -a 0777 -m 64
    fi
    wait_for "memcached" memcached_up "$memcached" && wait_for "memcached" memcached_up "$memcached_socket" \
        || { fail "memcached" "it does not answer on $memcached and $memcached_socket" "see FORKSAFE_MEMCACHED* in tests/caches"; return 1; }
}

setup_mariadb
setup_postgresql
if [ "$mode" = all ]; then
    setup_redis
    setup_memcached
    say "the machine is ready: MariaDB $mysql_host:$mysql_port, PostgreSQL $pg_host:$pg_port (role $mysql_user / $pg_user)," \
        "Redis 127.0.0.1:$redis_port, memcached $memcached and $memcached_socket"
fi
for line in "${skipped[@]}"; do
    say "skipped $line"
done
exit 0
