#!/usr/bin/env bash
# The fresh-machine proof (CONTRIBUTING.rst, "On a fresh Debian"): a Debian
# root filesystem made with debootstrap --variant=minbase plus python3, make,
# git and ca-certificates, entered with chroot with the host's network, its
# servers on ports of their own (the host's may hold the defaults), a fresh
# clone of this checkout's branch in /root/django-forksafe, and COMMAND run
# there (default: make demo, then make test, each timed).
#
#   tests/machine/chroot.sh bookworm|trixie [DIRECTORY [COMMAND]]
#
# As root, on Debian (debootstrap installed). DIRECTORY defaults to
# /var/tmp/forksafe-chroots/SUITE; remove it to start afresh.
set -euo pipefail

suite="${1:?usage: $0 bookworm|trixie [DIRECTORY [COMMAND]]}"
root="${2:-/var/tmp/forksafe-chroots/$suite}"
command="${3:-cd /root/django-forksafe && time make demo && time make test}"
source="$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
branch="$(git -C "$source" rev-parse --abbrev-ref HEAD)"

if [ ! -x "$root/usr/bin/python3" ]; then
    echo "--- debootstrap $suite into $root"
    debootstrap --variant=minbase --include=python3,make,git,ca-certificates "$suite" "$root" http://deb.debian.org/debian
fi
if [ ! -d "$root/root/django-forksafe" ]; then
    echo "--- a fresh clone of $source ($branch)"
    git clone --quiet --branch "$branch" "$source" "$root/root/django-forksafe"
fi
# The host's network, names (its hostname among them, as a machine's own
# /etc/hosts has it) and certificate authorities.
cp /etc/resolv.conf "$root/etc/resolv.conf"
cp /etc/hosts "$root/etc/hosts"
install -D -m 644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/host-ca-certificates.crt"
# The processes running in this root, or in a root under it (make test's
# forky chroot, built inside): the servers make started there.
inside() {
    local proc where top
    top="$(realpath "$root")"
    for proc in /proc/[0-9]*; do
        where="$(readlink "$proc/root" 2>/dev/null)" || continue
        case "$where" in "$top" | "$top"/*) echo "${proc#/proc/}" ;; esac
    done
}
mounted=()
cleanup() {
    local pids index
    mapfile -t pids < <(inside)
    if [ ${#pids[@]} -gt 0 ]; then
        echo "--- stopping what runs in $root (${#pids[@]} processes: its servers)"
        kill "${pids[@]}" 2>/dev/null || true
        for _ in $(seq 60); do [ -z "$(inside)" ] && break; sleep 0.5; done
        mapfile -t pids < <(inside)
        [ ${#pids[@]} = 0 ] || kill -KILL "${pids[@]}" 2>/dev/null || true
    fi
    for ((index = ${#mounted[@]} - 1; index >= 0; index--)); do umount -l "${mounted[index]}" || true; done
}
trap cleanup EXIT
# The root a mount point of its own, as a machine's is (unshare --mount
# changes its propagation: tests/test_child_state.py), then /proc and /dev.
if ! mountpoint -q "$root"; then
    mount --bind "$root" "$root"
    mounted+=("$root")
fi
for where in proc dev dev/pts dev/shm; do
    mountpoint -q "$root/$where" && continue
    mkdir -p "$root/$where"
    case "$where" in
        proc) mount -t proc proc "$root/proc" ;;
        dev/shm) mount -t tmpfs -o mode=1777 shm "$root/dev/shm" ;;
        *) mount --bind "/$where" "$root/$where" ;;
    esac
    mounted+=("$root/$where")
done
# Other ports than the defaults: the chroot shares the host's network, and
# the host's servers may hold 3306, 5432, 6379 and 11311, the host's forky
# chroot's (tests/machine/forky.sh) 13306, 15432, 16379 and 11312. They must
# be free: else make would find another machine's servers there and test
# those. The forky chroot that make test builds inside gets its own too.
ports=(FORKSAFE_MYSQL_PORT="${FORKSAFE_MYSQL_PORT:-23306}" FORKSAFE_PG_PORT="${FORKSAFE_PG_PORT:-25432}"
    FORKSAFE_REDIS_PORT="${FORKSAFE_REDIS_PORT:-26379}" FORKSAFE_MEMCACHED_PORT="${FORKSAFE_MEMCACHED_PORT:-21511}"
    FORKSAFE_FORKY_MYSQL_PORT="${FORKSAFE_FORKY_MYSQL_PORT:-23307}" FORKSAFE_FORKY_PG_PORT="${FORKSAFE_FORKY_PG_PORT:-25433}"
    FORKSAFE_FORKY_REDIS_PORT="${FORKSAFE_FORKY_REDIS_PORT:-26380}"
    FORKSAFE_FORKY_MEMCACHED_PORT="${FORKSAFE_FORKY_MEMCACHED_PORT:-21512}")
for setting in "${ports[@]}"; do
    python3 -c 'import socket, sys; socket.create_server(("127.0.0.1", int(sys.argv[1]))).close()' "${setting#*=}" 2>/dev/null \
        || { echo "--- port ${setting#*=} is taken on this host: choose another with ${setting%=*}=..." >&2; exit 1; }
done
env -i HOME=/root TERM="${TERM:-dumb}" LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_CERT=/etc/ssl/host-ca-certificates.crt "${ports[@]}" \
    ${TEST_ENVS:+TEST_ENVS="$TEST_ENVS"} ${CI:+CI="$CI"} \
    chroot "$root" /bin/bash -c "$command"
