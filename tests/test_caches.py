"""
Django's cache connections across forks: the fork-safe memcached BACKENDs
(django_forksafe.cache) against a real memcached, with the C extension and
without it; each hazard with Django's own BACKEND as the control wherever it
fails deterministically. Redis: Django's RedisCache, already safe (redis-py
checks the pid at every checkout), under the same load.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import pytest

from django_forksafe import endpoints
from tests import IMPORT_PATH, caches
from tests.programs import bin_path, failure, free_port, require, running, stop

LIBRARIES = pytest.mark.parametrize("library", caches.MEMCACHED_LIBRARIES)
MECHANISMS = pytest.mark.parametrize("native", ["1", "0"], ids=["C extension", "pure Python"])


def run(
    scenario: str,
    library: str,
    variant: str = "forksafe",
    where: str = "tcp",
    native: str = "1",
) -> dict[str, Any]:
    caches.require(library, where)
    process = subprocess.run(
        [sys.executable, "-m", "tests.caches", scenario, library, variant, where],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=IMPORT_PATH,
        env={**os.environ, "PYTHONPATH": IMPORT_PATH, "DJANGO_FORKSAFE_NATIVE": native},
    )
    assert process.returncode == 0, process.stderr
    result: dict[str, Any] = json.loads(process.stdout.strip().splitlines()[-1])
    assert result["native"] == (native == "1")
    return result


def assert_parent_kept_connection(result: dict[str, Any], where: str = "tcp") -> None:
    """The parent's next operations were right, on the client and (TCP) the
    connection it had before the fork, which the server still lists."""
    assert result["parent_error"] is None, result
    assert result["parent_right"]
    assert result["parent_same_client"]
    if where == "tcp":
        assert result["parent_same_ports"], result
        assert result["parent_ports_on_server"], result


def assert_every_reply_right(result: dict[str, Any]) -> None:
    processes = [result["parent"], *result["children"]]
    assert [(p["wrong"], p["errors"], p.get("child_error")) for p in processes] == [(0, 0, None)] * len(processes)


def tally(result: dict[str, Any]) -> tuple[int, int]:
    """Wrong values and errors, over the parent and its children."""
    processes = [result["parent"], *result["children"]]
    return sum(p.get("wrong", 0) for p in processes), sum(p.get("errors", 0) for p in processes)


# Parent and children at once -----------------------------------------------


@LIBRARIES
@MECHANISMS
@pytest.mark.parametrize("scenario", ["concurrent", "libc_fork_concurrent"])
def test_concurrent_parent_and_children_every_reply_right(scenario: str, library: str, native: str) -> None:
    result = run(scenario, library, native=native)
    assert_every_reply_right(result)
    parent_ports = set(result["parent_ports"])
    for child in result["children"]:
        # A connection of its own; the inherited socket silenced.
        assert len(child["ports"]) == 1 and not parent_ports & set(child["ports"]), result
    assert_parent_kept_connection(result)


@LIBRARIES
def test_concurrent_over_unix_socket(library: str) -> None:
    result = run("concurrent", library, where="unix")
    assert_every_reply_right(result)
    assert_parent_kept_connection(result, "unix")


# pymemcache only. How much the processes overlap is up to the scheduler, and
# pylibmc's runs under Django's BACKEND showed anything from thousands of
# wrong values (docs/caches.rst's numbers), to libmemcached aborting the process, to
# nothing at all on a loaded machine (CPython 3.13): not a control. pylibmc's
# deterministic ones are below (quit at a child's exit, another thread's
# client); pymemcache checks each reply's key, and errors every time.
@pytest.mark.parametrize("scenario", ["concurrent", "libc_fork_concurrent"])
def test_control_concurrent_wrong_values_or_errors(scenario: str) -> None:
    result = run(scenario, "pymemcache", "plain")
    wrong, errors = tally(result)
    print(f"pymemcache {scenario}, Django's BACKEND: {wrong} wrong values, {errors} errors")
    assert wrong + errors > 0, result


# What a child does with the client it inherited ------------------------------


@LIBRARIES
@pytest.mark.parametrize("scenario", ["child_uses", "libc_fork_child_uses"])
def test_child_has_a_connection_of_its_own(scenario: str, library: str) -> None:
    result = run(scenario, library)
    child = result["child"]
    assert (child["wrong"], child["errors"]) == (0, 0)
    assert child["ports"] and not set(child["ports"]) & set(result["parent_ports"])
    assert_parent_kept_connection(result)


@LIBRARIES
@pytest.mark.parametrize("scenario", ["child_uses", "libc_fork_child_uses"])
def test_control_child_uses_parent_connection(scenario: str, library: str) -> None:
    result = run(scenario, library, "plain")
    assert result["child"]["ports"] == result["parent_ports"]


EXITS = ["child_exits", "child_exits_unused", "child_os_exit", "libc_fork_child_exits", "libc_fork_child_exits_unused"]


@LIBRARIES
@MECHANISMS
@pytest.mark.parametrize("scenario", EXITS)
def test_child_exit_keeps_parent_connection(scenario: str, library: str, native: str) -> None:
    result = run(scenario, library, native=native)
    assert result["child_exit_status"] == 0
    assert_parent_kept_connection(result)


@pytest.mark.parametrize("scenario", [s for s in EXITS if s != "child_os_exit"])
def test_control_pylibmc_quit_at_child_exit_ends_parent_connection(scenario: str) -> None:
    # libmemcached's deallocator says `quit` on the inherited connection;
    # pymemcache's says nothing, and os._exit() frees nothing: no control.
    result = run(scenario, "pylibmc", "plain")
    assert result["parent_error"] is not None or not result["parent_same_ports"], result
    assert not result["parent_ports_on_server"]


THREADS = pytest.mark.parametrize("scenario", ["other_thread", "other_raw_thread"])


@LIBRARIES
@MECHANISMS
@THREADS
def test_other_threads_client_survives_child(scenario: str, library: str, native: str) -> None:
    result = run(scenario, library, native=native)
    assert (result["child"]["wrong"], result["child"]["errors"]) == (0, 0)
    assert_parent_kept_connection(result)


@THREADS
def test_control_other_threads_client_quits_in_child(scenario: str) -> None:
    result = run(scenario, "pylibmc", "plain")
    if scenario == "other_thread" and sys.version_info >= (3, 14):
        # CPython 3.14 runs a threading.Thread in a Context of its own, held
        # by the Thread object (Thread._context), which the dead thread's
        # frames still hold in the child: the cache object in that context
        # is never freed there, and nothing says quit. What 3.14 does, kept
        # as a tripwire; the raw thread (_thread's, or a C library's) shows
        # the failure on every version.
        assert result["parent_ports_on_server"], result
        return
    assert not result["parent_ports_on_server"], result


# A host name in LOCATION, a parent that forks after one operation ----------------

AFTER_ONE = ["fork_after_one_operation", "fork_after_one_operation_child_uses",
             "libc_fork_after_one_operation_child_uses"]


@LIBRARIES
@MECHANISMS
@pytest.mark.parametrize("scenario", AFTER_ONE)
def test_host_name_fork_after_one_operation_child_holds_nothing_of_parent(
    scenario: str, library: str, native: str
) -> None:
    result = run(scenario, library, where="hostname", native=native)
    child = result["child"]
    assert "child_error" not in child, result
    assert result["parent_ports"] and not set(result["parent_ports"]) & set(child["ports"]), result
    # No child keeps the parent's connection open: the server drops it at the parent's close().
    assert not result["listed_after_close"], result


def test_unrecorded_server_child_holds_nothing_of_parent() -> None:
    # The address the host name resolved to when the cache was made is not
    # the one connected to (pure Python, whose table the scenario can edit):
    # the child's walk through the inherited clients silences it all the same.
    result = run("fork_after_one_operation_unrecorded", "pymemcache", where="hostname", native="0")
    assert result["parent_ports"] and not set(result["parent_ports"]) & set(result["child"]["ports"]), result
    assert not result["listed_after_close"], result


@LIBRARIES
@pytest.mark.parametrize("scenario", AFTER_ONE)
def test_control_host_name_child_keeps_parent_connection(scenario: str, library: str) -> None:
    result = run(scenario, library, "plain", where="hostname")
    assert set(result["parent_ports"]) <= set(result["child"]["ports"]), result
    if library == "pymemcache":  # pylibmc's disconnect_all() says quit: the server drops it at once.
        assert result["listed_after_close"], result


# A client captured before the fork ------------------------------------------------


@LIBRARIES
@MECHANISMS
@pytest.mark.parametrize("where", ["tcp", "hostname"])
@pytest.mark.parametrize("scenario", ["captured_client", "libc_fork_captured_client_cache_first"])
def test_captured_client_silenced_then_broken(scenario: str, where: str, library: str, native: str) -> None:
    # docs/caches.rst: its first operation fails on the dead end; then
    # pymemcache's HashClient holds the server for failed (misses), and
    # never is the parent's connection used.
    result = run(scenario, library, where=where, native=native)
    assert_captured_client_broken(result, library)


@LIBRARIES
@pytest.mark.parametrize("where", ["tcp", "hostname"])
def test_captured_client_with_c_extension_libc_fork(where: str, library: str) -> None:
    result = run("libc_fork_captured_client", library, where=where)
    assert_captured_client_broken(result, library)


def assert_captured_client_broken(result: dict[str, Any], library: str) -> None:
    first, second = result["child"]["attempts"]
    # The dead end's own error, never a reply.
    assert "Broken pipe" in first, result
    if library == "pymemcache":  # libmemcached's next try depends on its version (see docs/caches.rst).
        assert second == "wrong", result
    assert not set(result["parent_ports"]) & set(result["child"]["ports"]), result
    assert_parent_kept_connection(result)


@LIBRARIES
def test_captured_client_pure_python_libc_fork_talks_on_parent_connection(library: str) -> None:
    # The limit docs/caches.rst states: nothing of ours runs in such a child
    # before its first use of the cache (or of a database).
    result = run("libc_fork_captured_client", library, native="0")
    assert result["child"]["attempts"] == ["right", "right"], result
    assert result["child"]["ports"] == result["parent_ports"], result


@LIBRARIES
@pytest.mark.parametrize("scenario", ["captured_client", "libc_fork_captured_client"])
def test_control_captured_client_talks_on_parent_connection(scenario: str, library: str) -> None:
    result = run(scenario, library, "plain")
    assert result["child"]["attempts"] == ["right", "right"], result
    assert result["child"]["ports"] == result["parent_ports"], result


# A backend of one's own ---------------------------------------------------------------


@LIBRARIES
def test_forksafe_cache_refuses_thread_local_client(library: str) -> None:
    caches.require(library)
    from django.utils.module_loading import import_string

    from django_forksafe.cache import forksafe_cache

    backend = caches.BACKENDS[library]["threadlocal"]
    with pytest.raises(TypeError, match=r"defines _cache as a property, not as a cached_property.*threading\.local"):
        forksafe_cache(import_string(backend))


def test_control_thread_local_client_child_gets_parents_back() -> None:
    # Why it is refused: the child's client is the parent's, from the
    # thread-local, on the parent's connection.
    result = run("child_uses", "pylibmc", "threadlocal")
    assert result["child"]["client_id"] == result["parent_client_id"], result


@LIBRARIES
def test_thread_local_client_with_mixin_put_on_by_hand_refused_at_first_use(library: str) -> None:
    # No fallback to the class's own _cache, which would hand a child the
    # parent's client.
    caches.require(library)
    from django.utils.module_loading import import_string

    backend = import_string(caches.BACKENDS[library]["threadlocal_forced"])(caches.MEMCACHED, {})
    with pytest.raises(TypeError, match=r"ForcedThreadLocal\w+ defines _cache as a property, not as a cached_prop"):
        backend.get("key")


@LIBRARIES
def test_own_cached_property_client_child_has_its_own(library: str) -> None:
    result = run("child_uses", library, "own")
    child = result["child"]
    assert (child["wrong"], child["errors"]) == (0, 0)
    assert child["client_id"] != result["parent_client_id"]
    assert child["ports"] and not set(child["ports"]) & set(result["parent_ports"])
    assert_parent_kept_connection(result)


@LIBRARIES
def test_system_check_hint_for_refused_backend(library: str) -> None:
    caches.require(library)
    from django.test import override_settings

    from django_forksafe.checks import check_cache_backends

    backend = caches.BACKENDS[library]["threadlocal"]
    with override_settings(CACHES={"default": {"BACKEND": backend, "LOCATION": caches.MEMCACHED}}):
        (warning,) = check_cache_backends()
    assert warning.id == "django_forksafe.W004" and warning.hint is not None
    assert "forksafe_cache(<" not in warning.hint
    assert "defines _cache as a property" in warning.hint
    assert "'django_forksafe.cache.PyLibMCCache' or 'django_forksafe.cache.PyMemcacheCache'" in warning.hint


# Run-time client state ---------------------------------------------------------------


@pytest.fixture(scope="module")
def memcached_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """Two memcached servers of this module's own, on free ports."""
    require("memcached")
    ports = [free_port(), free_port()]
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    log_dir = tmp_path_factory.mktemp("memcached")
    with contextlib.ExitStack() as stack:
        for port in ports:
            command = ["memcached", *user, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "16"]
            stack.enter_context(running(command, dict(os.environ), port, log_dir / f"{port}.log"))
        os.environ[caches.PAIR_ENV] = ",".join(map(str, ports))
        try:
            yield ports
        finally:
            del os.environ[caches.PAIR_ENV]


@LIBRARIES
@MECHANISMS
def test_runtime_client_state_kept_in_child(library: str, native: str, memcached_pair: list[int]) -> None:
    result = run("runtime_state", library, where="pair", native=native)
    assert all(result["spread"].values()), result  # Keys on both servers: the hashing matters.
    child = result["child"]
    assert child["own_client"] and child["found"] == result["keys"], result
    if library == "pylibmc":
        assert child["ketama"], result
    else:
        assert child["servers"] == result["parent_servers"] and len(child["servers"]) == 2, result
    assert child["ports"] and not set(child["ports"]) & set(result["parent_ports"]), result


@MECHANISMS
def test_dead_server_held_for_dead_in_child(native: str, memcached_pair: list[int]) -> None:
    # A fresh HashClient would try the down server again, and lose the first
    # key that hashes to it.
    result = run("dead_server_state", "pymemcache", where="pair_and_down", native=native)
    assert result["parent_dead"] and result["parent_found"] == result["keys"], result
    assert result["child"]["found"] == result["keys"], result


# Redis: Django's own backend is the anchor --------------------------------------


@pytest.mark.parametrize("scenario", ["concurrent", "libc_fork_concurrent"])
def test_django_redis_cache_already_safe(scenario: str) -> None:
    require("redis")
    result = run(scenario, "redis", "plain")
    assert_every_reply_right(result)
    assert result["parent_error"] is None and result["parent_right"]


# Endpoints from LOCATION ----------------------------------------------------------


def make_cache(library: str, location: Any) -> Any:
    from django.core.cache.backends.base import BaseCache

    from django_forksafe import cache

    backend = {"pylibmc": cache.PyLibMCCache, "pymemcache": cache.PyMemcacheCache}[library]
    made: BaseCache = backend(location, {})
    return made


@LIBRARIES
@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("127.0.0.1:21311", {("127.0.0.1", 21311)}),
        ("127.0.0.2", {("127.0.0.2", 11211)}),
        (["127.0.0.1:21312", "127.0.0.1:21313"], {("127.0.0.1", 21312), ("127.0.0.1", 21313)}),
        ("127.0.0.1:21314;127.0.0.1:21315", {("127.0.0.1", 21314), ("127.0.0.1", 21315)}),
        ("[::1]:21316", {("::1", 21316)}),
        ("localhost:21317", {("127.0.0.1", 21317), ("::1", 21317)}),
        ("unix:/tmp/forksafe-test-a.sock", {("unix", "/tmp/forksafe-test-a.sock")}),
        ("/tmp/forksafe-test-b.sock", {("unix", "/tmp/forksafe-test-b.sock")}),
    ],
)
def test_endpoints_from_location_without_dns(library: str, location: Any, expected: set[Any]) -> None:
    caches.require(library)
    make_cache(library, location)
    assert expected <= endpoints._endpoints


@LIBRARIES
def test_host_name_resolved_once_when_made(library: str) -> None:
    # Recorded before the first operation: a parent may fork right after it.
    caches.require(library)
    endpoints._endpoints.discard(("127.0.0.1", 21318))
    endpoints._resolved.discard((caches.HOST_NAME, 21318))
    make_cache(library, f"{caches.HOST_NAME}:21318")
    assert ("127.0.0.1", 21318) in endpoints._endpoints


def test_host_name_server_down_no_slow_path() -> None:
    # The client is the one Django's methods read at once from then on: no
    # exception raised and caught per operation, whatever the server does.
    # (pymemcache: pylibmc on CPython 3.13 prints exceptions of its own when
    # a server is down.)
    caches.require("pymemcache")
    made = make_cache("pymemcache", f"{caches.HOST_NAME}:{free_port()}")
    for _ in range(2):
        with contextlib.suppress(Exception):  # The server is down.
            made.get("forksafe-test-down")
    assert "_forksafe_client" in vars(made)
    made._cache.disconnect_all()


# Django's behaviour kept ---------------------------------------------------------


@LIBRARIES
def test_backend_is_djangos_in_the_parent(library: str) -> None:
    caches.require(library)
    made = make_cache(library, caches.MEMCACHED)
    client = made._cache
    assert made._cache is client
    key = f"forksafe-test-{uuid.uuid4().hex}"
    made.set(key, 1)
    assert made.incr(key) == 2
    assert made.get_many([key]) == {key: 2}
    made.close()  # Django's close() at request end: the same client after it.
    assert made._cache is client and made.get(key) == 2
    del made._cache  # As with Django's cached_property: a new client.
    assert made._cache is not client
    replacement = made._cache
    made._cache = client  # And this one from now on, as assigning to it does.
    assert made._cache is client and made.get(key) == 2
    made._cache = replacement
    made.delete(key)
    # Django leaves a dropped client to the GC, and PyLibMCCache's close()
    # to libmemcached: disconnected here, so that no socket is left open.
    client.disconnect_all()
    made._cache.disconnect_all()


def test_forksafe_cache_refuses_other_classes() -> None:
    from django.core.cache.backends.locmem import LocMemCache

    from django_forksafe.cache import PyLibMCCache, forksafe_cache

    with pytest.raises(TypeError):
        forksafe_cache(LocMemCache)  # type: ignore[type-var]
    assert forksafe_cache(PyLibMCCache) is PyLibMCCache


# forksafe_check and the system checks ---------------------------------------------


def cache_settings_command(library: str, variant: str, *args: str) -> subprocess.CompletedProcess[str]:
    """A django-admin command on tests.caches.settings (not testproject's
    manage.py): `library`'s memcached BACKEND, Django's or ours (`variant`)."""
    caches.require(library)
    return subprocess.run(
        [sys.executable, "-m", "django", *args],
        capture_output=True, text=True, timeout=300, cwd=IMPORT_PATH,
        env={**os.environ, "PYTHONPATH": IMPORT_PATH, "DJANGO_SETTINGS_MODULE": "tests.caches.settings",
             "FORKSAFE_CACHE_LIBRARY": library, "FORKSAFE_CACHE_VARIANT": variant},
    )


@LIBRARIES
def test_forksafe_check_covers_caches(library: str) -> None:
    process = cache_settings_command(library, "forksafe", "forksafe_check", "--cache", "default", "--format", "json")
    assert process.returncode == 0, process.stdout + process.stderr
    (result,) = json.loads(process.stdout)
    assert result["kind"] == "cache" and result["forksafe"] and result["reachable"]
    assert [hazard["safe"] for hazard in result["hazards"]] == [True, True], result


@LIBRARIES
def test_control_forksafe_check_reports_plain_backend_open(library: str) -> None:
    process = cache_settings_command(library, "plain", "forksafe_check", "--cache", "default")
    assert process.returncode == 3, process.stdout + process.stderr
    assert re.search(r"^  concurrent use +OPEN", process.stdout, re.MULTILINE), process.stdout
    assert f"-> Use BACKEND = 'django_forksafe.cache.{caches.BACKENDS[library]['plain'].rpartition('.')[2]}'" in (
        process.stdout
    )


@LIBRARIES
def test_system_check_warns_of_plain_memcached_backend(library: str) -> None:
    plain = cache_settings_command(library, "plain", "check")
    forksafe = cache_settings_command(library, "forksafe", "check")
    replacement = caches.BACKENDS[library]["forksafe"]
    assert f"(django_forksafe.W004) Cache 'default' uses BACKEND '{caches.BACKENDS[library]['plain']}'" in plain.stderr
    assert f"HINT: Use BACKEND = '{replacement}'." in plain.stderr
    assert "W004" not in forksafe.stderr + forksafe.stdout and forksafe.returncode == 0


# Real programs ----------------------------------------------------------------------


def program_env(library: str, variant: str, program: str) -> dict[str, str]:
    # tests.caches.project configures Django itself. Without
    # DJANGO_SETTINGS_MODULE, Celery's Django fixup stays out: with it, Celery
    # closes the caches after every task, which gives pymemcache's client a
    # connection of its own each time (disconnect_all) but not pylibmc's
    # (Django's close() does nothing there).
    environ = {name: value for name, value in os.environ.items() if name != "DJANGO_SETTINGS_MODULE"}
    return {
        **environ,
        "PATH": bin_path(),
        "PYTHONPATH": IMPORT_PATH,
        "FORKSAFE_CACHE_LIBRARY": library,
        "FORKSAFE_CACHE_VARIANT": variant,
        "FORKSAFE_CACHE_PROGRAM": program,
        "FORKSAFE_CACHE_PREFIX": f"forksafe-test-{uuid.uuid4().hex[:12]}",
    }


def browse(port: int, clients: int = 8, visits: int = 15) -> list[dict[str, Any]]:
    """Each client, with a cookie jar of its own, visits `visits` times."""

    def visit_all(_: int) -> list[dict[str, Any]]:
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        outcomes = []
        for expected in range(1, visits + 1):
            try:
                with opener.open(f"http://127.0.0.1:{port}/check/?n=20", timeout=20) as response:
                    outcomes.append({"expected_visits": expected, **json.loads(response.read())})
            except Exception as exc:
                outcomes.append({"expected_visits": expected, "error": failure(exc)})
        return outcomes

    with ThreadPoolExecutor(clients) as pool:
        return [outcome for outcomes in pool.map(visit_all, range(clients)) for outcome in outcomes]


def bad(outcomes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        o for o in outcomes
        if "error" in o or o["wrong"] or o["errors"] or o.get("visits", o["expected_visits"]) != o["expected_visits"]
    ]


def gunicorn_command(port: int) -> list[str]:
    return ["gunicorn", "tests.caches.project:application", "--preload", "--workers", "4",
            "--bind", f"127.0.0.1:{port}", "--graceful-timeout", "5"]


@LIBRARIES
def test_gunicorn_preload_warmed_cache(library: str, tmp_path: Path) -> None:
    caches.require(library)
    require("gunicorn")
    port = free_port()
    with running(gunicorn_command(port), program_env(library, "forksafe", "gunicorn"), port, tmp_path / "g.log"):
        outcomes = browse(port)
    assert bad(outcomes) == []
    assert len({o["pid"] for o in outcomes}) > 1  # Several workers served.


def test_control_gunicorn_preload_warmed_cache(tmp_path: Path) -> None:
    # pylibmc only: Django's close() at the end of each request disconnects
    # pymemcache's client, so a worker shares the master's connection for its
    # first request only (a race, not a deterministic failure); for pylibmc,
    # close() does nothing.
    caches.require("pylibmc")
    require("gunicorn")
    port = free_port()
    with running(gunicorn_command(port), program_env("pylibmc", "plain", "gunicorn"), port, tmp_path / "g.log"):
        outcomes = browse(port)
    print(f"pylibmc gunicorn, Django's BACKEND: {len(bad(outcomes))} of {len(outcomes)} responses wrong")
    assert bad(outcomes)


def celery_outcomes(library: str, variant: str, tmp_path: Path) -> list[dict[str, Any]]:
    caches.require(library)
    require("redis", "celery")
    from celery import Celery

    from tests.caches.project import BROKER

    queue = f"forksafe-caches-{uuid.uuid4().hex[:8]}"
    command = ["celery", "-A", "tests.caches.project", "worker", "--pool", "prefork", "--concurrency", "4",
               "--queues", queue, "--without-heartbeat", "--without-gossip", "--without-mingle", "--loglevel", "INFO"]
    client = Celery(broker=BROKER, backend=BROKER)
    try:
        with running(command, program_env(library, variant, "celery"), None, tmp_path / "celery.log") as worker:
            results = [client.send_task("forksafe_caches.rounds", args=[200], queue=queue) for _ in range(16)]
            outcomes = []
            for result in results:
                try:
                    outcomes.append(result.get(timeout=60))
                except Exception as exc:
                    outcomes.append({"error": f"{type(exc).__name__}: {exc}", "wrong": 0, "errors": 1})
            stop(worker)
    finally:
        client.close()
    return outcomes


@LIBRARIES
def test_celery_prefork_worker_warmed_cache(library: str, tmp_path: Path) -> None:
    outcomes = celery_outcomes(library, "forksafe", tmp_path)
    assert [(o["wrong"], o["errors"]) for o in outcomes] == [(0, 0)] * len(outcomes)
    assert len({o["pid"] for o in outcomes}) > 1  # Tasks ran in several children.


@LIBRARIES
def test_control_celery_prefork_worker_warmed_cache(library: str, tmp_path: Path) -> None:
    outcomes = celery_outcomes(library, "plain", tmp_path)
    wrong, errors = sum(o["wrong"] for o in outcomes), sum(o["errors"] for o in outcomes)
    print(f"{library} Celery, Django's BACKEND: {wrong} wrong values, {errors} errors")
    assert wrong + errors > 0
