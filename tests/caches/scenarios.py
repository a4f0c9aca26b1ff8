"""
Cache fork hazards, reproduced with real forks against a real memcached (or
Redis): ``python -m tests.caches SCENARIO LIBRARY VARIANT [WHERE]`` runs one
in a fresh process and prints one JSON object of observations for
tests/test_caches.py to judge. LIBRARY is pylibmc, pymemcache or redis;
VARIANT is plain (Django's BACKEND) or forksafe; WHERE is tcp or unix.

The parent always warms the cache before it forks (a set and a get: what an
AppConfig.ready() warm-up or a settings check does in a preloading master).
Which connection a process uses is seen from both ends: the local ports of
the TCP sockets to the server that the process holds (/proc), and the
server's own list of client connections (memcached's ``stats conns``).
"""

from __future__ import annotations

import _thread
import gc
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from django_forksafe.hazards import Fork, child_report, fork_child, libc_fork, run_child
from tests import caches, dbconfig

Observations = dict[str, Any]

ROUNDS = 500
CHILDREN = 4
# Keys of this run only: other clients of the server never fail the test.
PREFIX = f"forksafe-test-{uuid.uuid4().hex[:12]}"


def cache() -> Any:
    from django.core.cache import caches as django_caches

    return django_caches["default"]


def server_port(library: str) -> int:
    return dbconfig.REDIS_PORT if library == "redis" else int(caches.MEMCACHED.rpartition(":")[2])


def held_ports(library: str) -> set[int]:
    """Local ports of this process's TCP sockets to the server."""
    return caches.held_ports(server_port(library))


def ask(address: tuple[str, int], command: str) -> tuple[bytes, int]:
    """memcached's reply to `command` (up to its END), on a connection of
    its own; and that connection's local port."""
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(f"{command}\r\n".encode())
        data = b""
        while not data.endswith(b"END\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data, int(sock.getsockname()[1])


def server_client_ports() -> set[int]:
    """The client ports memcached lists as connected (``stats conns``)."""
    host, _, port = caches.MEMCACHED.rpartition(":")
    data, own = ask((host, int(port)), "stats conns")
    ports = set()
    for line in data.decode().splitlines():
        fields = line.split()  # STAT 24:addr tcp:127.0.0.1:42888
        if len(fields) == 3 and fields[1].endswith(":addr") and fields[2].startswith("tcp:"):
            ports.add(int(fields[2].rpartition(":")[2]))
    return ports - {own, int(port)}


def set_and_get(rounds: int, tag: str = "") -> Observations:
    """`rounds` times set(key, key) then get(key): every reply checked."""
    wrong = errors = 0
    first_error = None
    for i in range(rounds):
        key = f"{PREFIX}:{tag}{os.getpid()}:{i}"
        try:
            cache().set(key, key)
            wrong += cache().get(key) != key
        except Exception as exc:
            errors += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"
    return {"wrong": wrong, "errors": errors, "first_error": first_error}


class Parent:
    """The parent's connection(s) as they were after its warm-up."""

    def __init__(self, library: str, where: str, client: Any = None) -> None:
        """`client`: the client the caller took from the cache, through
        which alone the parent makes one operation (it connects)."""
        self.library, self.where = library, where
        key = f"{PREFIX}:warm-up"
        if client is None:
            cache().set(key, "warm")
            assert cache().get(key) == "warm"
        else:
            client.set(cache().make_and_validate_key(key), "warm")
        self.client_id = id(client if client is not None else cache()._cache) if library != "redis" else None
        self.ports = held_ports(library) if where != "unix" else set()

    def check(self) -> Observations:
        """The parent's next operations: right, on the connection it had."""
        observations: Observations = {"parent_error": None}
        try:
            key = f"{PREFIX}:parent-after"
            cache().set(key, "after")
            observations["parent_right"] = cache().get(key) == "after" and cache().get(f"{PREFIX}:warm-up") == "warm"
        except Exception as exc:
            observations["parent_error"] = f"{type(exc).__name__}: {exc}"
        if self.client_id is not None:
            observations["parent_same_client"] = id(cache()._cache) == self.client_id
        if self.where != "unix" and self.library != "redis":
            ports = held_ports(self.library)
            observations["parent_ports"] = sorted(self.ports)
            observations["parent_same_ports"] = bool(self.ports) and ports == self.ports
            observations["parent_ports_on_server"] = bool(self.ports) and self.ports <= server_client_ports()
        return observations


def concurrent(library: str, where: str, fork: Fork = os.fork) -> Observations:
    """The parent and CHILDREN children, ROUNDS set/get each, at once."""
    parent = Parent(library, where)

    def work() -> Observations:
        return {**set_and_get(ROUNDS), "ports": sorted(held_ports(library))}

    go_read, go_write = os.pipe()
    forked = [fork_child(work, fork, go=go_read) for _ in range(CHILDREN)]
    os.write(go_write, b"g" * CHILDREN)  # One byte for each child: all start at once.
    mine = set_and_get(ROUNDS)
    children = [child_report(*child, timeout=120) for child in forked]
    return {"parent": mine, "children": children, **parent.check()}


def child_uses(library: str, where: str, fork: Fork = os.fork) -> Observations:
    """A child sets and gets (the parent waits), then leaves by os._exit()."""
    parent = Parent(library, where)

    def work() -> Observations:
        return {**set_and_get(20), "ports": sorted(held_ports(library)), "client_id": id(cache()._cache)}

    child = run_child(work, fork)
    return {"child": child, "parent_client_id": parent.client_id, **parent.check()}


def child_exits(library: str, where: str, how: str, fork: Fork = os.fork, uses: bool = True) -> Observations:
    """A child (that used the cache, or not) ends by interpreter
    finalisation (sys.exit) or by os._exit(): the parent must keep its
    connection, untouched."""
    parent = Parent(library, where)
    pid = fork()
    if pid == 0:
        if uses:
            set_and_get(20)
        if how == "exit":
            sys.exit(0)  # Finalisation frees what the child holds.
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return {"child_exit_status": os.waitstatus_to_exitcode(status), **parent.check()}


def other_thread(library: str, where: str, fork: Fork = os.fork, raw: bool = False) -> Observations:
    """Another thread's cache object (Django's caches are per thread: a
    context variable, asgiref's Local) holds a client when the main thread
    forks. In the child, CPython frees that thread's state, and the garbage
    collector what only it held. `raw`: the thread is _thread's, not a
    threading.Thread (as a C library's thread that calls into Python): from
    CPython 3.14 a threading.Thread runs in a Context of its own that the
    Thread object holds (Thread._context), and in a child the dead thread's
    frames still hold the Thread, so its cache object is never freed there;
    a raw thread's Context is held by its thread state alone, and freed with
    it on every version."""
    opened, forked, done = threading.Event(), threading.Event(), threading.Event()
    observations: Observations = {}

    def hold() -> None:
        try:
            parent = Parent(library, where)
            opened.set()
            forked.wait()
            observations.update(parent.check())
        finally:
            opened.set()
            done.set()

    thread = None
    if raw:
        _thread.start_new_thread(hold, ())
    else:
        thread = threading.Thread(target=hold)
        thread.start()
    opened.wait()

    def work() -> Observations:
        gc.collect()  # Frees what CPython's fork left of the other thread.
        return set_and_get(20)

    child = run_child(work, fork)
    forked.set()
    done.wait()
    if thread is not None:
        thread.join()
    return {"child": child, **observations}


def fork_after_one_operation(
    library: str, where: str, fork: Fork = os.fork, uses: bool = False, unrecorded: bool = False
) -> Observations:
    """The parent makes one operation (it connects, nothing more) and forks.
    The child (after using the cache, or not) says which of the server's
    connections it holds, and stays while the parent closes its own: the
    server must then drop the parent's connection, which no child holds.
    `unrecorded`: the server's address taken out of the (pure Python)
    endpoint table, as if the host name had resolved elsewhere."""
    key = f"{PREFIX}:one"
    cache().set(key, "one")
    if unrecorded:
        from django_forksafe import endpoints

        endpoints._endpoints.difference_update({("127.0.0.1", server_port(library)), ("::1", server_port(library))})
    parent_ports = held_ports(library)
    report_read, report_write = os.pipe()
    release_read, release_write = os.pipe()
    pid = fork()
    if pid == 0:
        try:
            if uses:
                assert cache().get(key) == "one"
            observations: Observations = {"ports": sorted(held_ports(library))}
        except BaseException as exc:
            observations = {"child_error": f"{type(exc).__name__}: {exc}"}
        os.write(report_write, json.dumps(observations).encode())
        os.close(report_write)
        os.read(release_read, 1)
        os._exit(0)
    os.close(report_write)
    os.close(release_read)
    with os.fdopen(report_read) as pipe:
        child = json.loads(pipe.read() or '{"child_error": "the child died"}')
    cache()._cache.disconnect_all()  # Django's close() leaves pylibmc's connected.
    listed_after_close = bool(parent_ports & server_client_ports())
    # The server drops a connection once the last process holding it has
    # closed it: a moment after the parent's close (bounded, polled).
    deadline = time.monotonic() + 10
    while listed_after_close and time.monotonic() < deadline:
        time.sleep(0.02)
        listed_after_close = bool(parent_ports & server_client_ports())
    os.write(release_write, b"x")
    os.close(release_write)
    os.waitpid(pid, 0)
    return {"parent_ports": sorted(parent_ports), "child": child, "listed_after_close": listed_after_close}


def captured_client(library: str, where: str, fork: Fork = os.fork, cache_first: bool = False) -> Observations:
    """User code holds the client (``mc = cache._cache``) across the fork;
    the child (after using the cache, or not) sets and gets through it
    twice, and says which of the server's connections it holds. The parent
    makes one operation, through that client (it connects, nothing more)."""
    captured = cache()._cache
    parent = Parent(library, where, captured)

    def work() -> Observations:
        if cache_first:
            cache().get(f"{PREFIX}:warm-up")
        attempts = []
        for attempt in range(2):
            key = f"{PREFIX}:captured:{os.getpid()}:{attempt}"
            try:
                captured.set(key, "child")
                attempts.append("right" if captured.get(key) == "child" else "wrong")
            except Exception as exc:
                attempts.append(f"{type(exc).__name__}: {exc}")
        return {"attempts": attempts, "ports": sorted(held_ports(library))}

    child = run_child(work, fork)
    return {"child": child, **parent.check()}


def runtime_state(library: str, where: str) -> Observations:
    """The parent changes its client at run time (pylibmc: ketama hashing in
    its behaviors; pymemcache: the pair's second server added), sets KEYS
    keys, which land on both servers, and forks: the child must read them
    all, each from the server its parent stored it on."""
    keys = [f"{PREFIX}:spread:{i}" for i in range(40)]
    client = cache()._cache
    if library == "pylibmc":
        client.behaviors = {"ketama": True}
    else:
        client.add_server("127.0.0.1", caches.pair_ports()[1])
    for key in keys:
        cache().set(key, key)
    spread = {port: sum(server_has(port, cache().make_and_validate_key(key)) for key in keys)
              for port in caches.pair_ports()}

    def work() -> Observations:
        found = sum(cache().get(key) == key for key in keys)
        own = cache()._cache
        return {
            "found": found,
            "own_client": own is not client,
            "ketama": bool(own.behaviors["ketama"]) if library == "pylibmc" else None,
            "servers": sorted(own.clients) if library == "pymemcache" else None,
            "ports": sorted(port for server in caches.pair_ports() for port in caches.held_ports(server)),
        }

    child = run_child(work)
    parent_ports = sorted(port for server in caches.pair_ports() for port in caches.held_ports(server))
    return {"keys": len(keys), "spread": spread, "child": child, "parent_ports": parent_ports,
            "parent_servers": sorted(client.clients) if library == "pymemcache" else None}


def dead_server_state(library: str, where: str) -> Observations:
    """pymemcache, LOCATION a server of the pair and one that is down: the
    parent's HashClient holds the down one for dead at its first failure,
    and every key goes to the other from then on. The child must read the
    KEYS keys the parent set, each from where the parent stored it."""
    keys = [f"{PREFIX}:dead:{i}" for i in range(40)]
    for _ in range(2):  # The first round finds the dead server (a key is lost).
        for key in keys:
            cache().set(key, key)
    parent_found = sum(cache().get(key) == key for key in keys)
    child = run_child(lambda: {"found": sum(cache().get(key) == key for key in keys)})
    return {"keys": len(keys), "parent_found": parent_found, "child": child,
            "parent_dead": sorted(map(str, cache()._cache._dead_clients))}


def server_has(port: int, key: str) -> bool:
    """Whether the memcached on 127.0.0.1:`port` holds `key` (asked directly)."""
    return ask(("127.0.0.1", port), f"get {key}")[0].startswith(b"VALUE ")


SCENARIOS: dict[str, Callable[[str, str], Observations]] = {
    "concurrent": concurrent,
    "libc_fork_concurrent": lambda library, where: concurrent(library, where, libc_fork),
    "child_uses": child_uses,
    "libc_fork_child_uses": lambda library, where: child_uses(library, where, libc_fork),
    "child_exits": lambda library, where: child_exits(library, where, "exit"),
    "child_exits_unused": lambda library, where: child_exits(library, where, "exit", uses=False),
    "child_os_exit": lambda library, where: child_exits(library, where, "_exit"),
    "libc_fork_child_exits": lambda library, where: child_exits(library, where, "exit", libc_fork),
    "libc_fork_child_exits_unused": lambda library, where: child_exits(library, where, "exit", libc_fork, False),
    "other_thread": other_thread,
    "other_raw_thread": lambda library, where: other_thread(library, where, raw=True),
    "fork_after_one_operation": fork_after_one_operation,
    "fork_after_one_operation_child_uses": lambda library, where: fork_after_one_operation(library, where, uses=True),
    "libc_fork_after_one_operation_child_uses": lambda library, where: fork_after_one_operation(
        library, where, libc_fork, uses=True
    ),
    "fork_after_one_operation_unrecorded": lambda library, where: fork_after_one_operation(
        library, where, unrecorded=True
    ),
    "captured_client": captured_client,
    "libc_fork_captured_client": lambda library, where: captured_client(library, where, libc_fork),
    "libc_fork_captured_client_cache_first": lambda library, where: captured_client(
        library, where, libc_fork, cache_first=True
    ),
    "runtime_state": runtime_state,
    "dead_server_state": dead_server_state,
}
