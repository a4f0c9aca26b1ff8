"""
The pure functions, without a server or a fork: in seconds (tox -e unit,
make unit). Endpoints from every form of HOST/PORT/OPTIONS and LOCATION,
the ENGINE and BACKEND suggestions, the process mark's selection, uWSGI's
hook detection.
"""

from __future__ import annotations

import types
from typing import Any

import pytest

from django_forksafe import endpoints, silencing
from django_forksafe.backends import suggest_engine
from django_forksafe.cache import backend_hint
from django_forksafe.contrib import uwsgi_detection
from django_forksafe.detection import GETPID, WIPEONFORK, make_mark
from tests.utils import require_native


@pytest.mark.parametrize(
    ("vendor", "host", "port", "expected"),
    [
        ("postgresql", "", "", [("", 5432)]),
        ("postgresql", "db1", "", [("db1", 5432)]),
        ("postgresql", "db1,db2", "5433", [("db1", 5433), ("db2", 5433)]),
        ("postgresql", "db1, db2", "5432,5433", [("db1", 5432), ("db2", 5433)]),
        ("postgresql", "db1", "not-a-port", []),  # libpq says what is wrong with it.
        ("mysql", "127.0.0.1", 3307, [("127.0.0.1", 3307)]),
        ("mysql", "db1,db2", "", [("db1,db2", 3306)]),  # No lists in MySQL.
        ("mysql", None, None, [("", 3306)]),
    ],
)
def test_hosts_and_ports(vendor: str, host: Any, port: Any, expected: list[tuple[str, int]]) -> None:
    assert list(endpoints._hosts_and_ports(vendor, {"HOST": host, "PORT": port})) == expected


@pytest.mark.parametrize(
    ("vendor", "settings", "expected"),
    [
        ("postgresql", {"HOST": "10.9.8.7", "PORT": "6543"}, [("10.9.8.7", 6543)]),
        ("postgresql", {"HOST": "10.9.8.1,10.9.8.2", "PORT": "6001,6002"}, [("10.9.8.1", 6001), ("10.9.8.2", 6002)]),
        ("postgresql", {"HOST": "::ffff:10.9.8.3", "PORT": "6003"}, [("10.9.8.3", 6003)]),  # IPv4-mapped.
        ("postgresql", {"HOST": "/run/forksafe-pg", "PORT": "6004"}, [("unix", "/run/forksafe-pg/.s.PGSQL.6004")]),
        ("postgresql", {"HOST": "", "PORT": "6005"}, [("unix", "/any/dir/.s.PGSQL.6005")]),  # libpq: a Unix socket.
        ("mysql", {"HOST": "/run/forksafe-mysqld.sock"}, [("unix", "/run/forksafe-mysqld.sock")]),
        ("mysql", {"HOST": "localhost", "PORT": "6006"}, [("127.0.0.1", 6006), ("::1", 6006)]),
        (
            "mysql",
            {"HOST": "", "OPTIONS": {"unix_socket": "/run/forksafe-other.sock"}},
            [("unix", "/run/forksafe-other.sock")],
        ),
    ],
)
def test_settings_endpoints_recorded_without_dns(
    vendor: str, settings: dict[str, Any], expected: list[endpoints.Endpoint]
) -> None:
    endpoints.remember_settings(vendor, settings)
    for endpoint in expected:
        assert endpoints.is_server(endpoint), endpoint


def test_a_socket_path_too_long_for_a_socket_address_is_the_drivers_to_refuse() -> None:
    # As with Django's ENGINE, the error comes at connect, from the driver:
    # making the wrapper (its endpoints given to the C extension) does not fail.
    from django.db.utils import ConnectionHandler

    from tests import dbconfig

    require_native()
    host = "/" + "x" * 200
    handler = ConnectionHandler({"default": dbconfig.database("postgresql", HOST=host, PORT="5432")})
    try:
        assert handler["default"].settings_dict["HOST"] == host
    finally:
        endpoints._endpoints.discard(("unix", f"{host}/.s.PGSQL.5432"))


def test_a_host_name_is_not_resolved_from_settings() -> None:
    endpoints.remember_settings("postgresql", {"HOST": "db.forksafe.invalid", "PORT": "6010"})
    assert not any(port == 6010 for _, port in endpoints._endpoints)


@pytest.mark.parametrize(
    ("location", "endpoint"),
    [
        ("/tmp/forksafe-memcached.sock", ("unix", "/tmp/forksafe-memcached.sock")),
        ("10.9.8.20", ("10.9.8.20", 7020)),
        ("localhost", ("::1", 7020)),
        ("127.1", ("127.0.0.1", 7020)),  # A host name (for ipaddress), resolved.
    ],
)
def test_cache_locations(location: str, endpoint: endpoints.Endpoint) -> None:
    endpoints.remember_server(location, 7020)
    assert endpoints.is_server(endpoint)


@pytest.mark.parametrize(
    ("engine", "suggested"),
    [
        ("django.db.backends.mysql", "django_forksafe.backends.mysql"),
        ("django.db.backends.postgresql", "django_forksafe.backends.postgresql"),
        ("django.db.backends.sqlite3", "django_forksafe.backends.sqlite3"),
        ("django.contrib.gis.db.backends.postgis", "django_forksafe.backends.gis.postgis"),
        ("django.contrib.gis.db.backends.spatialite", "django_forksafe.backends.gis.spatialite"),
        ("django.db.backends.oracle", "forksafe(<django.db.backends.oracle>.base.DatabaseWrapper)"),
        ("some_vendor.backend", "forksafe(<some_vendor.backend>.base.DatabaseWrapper)"),
    ],
)
def test_engine_suggestion(engine: str, suggested: str) -> None:
    assert suggested in suggest_engine(engine)


@pytest.mark.parametrize(
    ("backend", "suggested"),
    [
        ("django.core.cache.backends.memcached.PyLibMCCache", "django_forksafe.cache.PyLibMCCache"),
        ("django.core.cache.backends.memcached.PyMemcacheCache", "django_forksafe.cache.PyMemcacheCache"),
        ("my.cache.Backend", "forksafe_cache(<my.cache.Backend>)"),
    ],
)
def test_cache_backend_suggestion(backend: str, suggested: str) -> None:
    assert suggested in backend_hint(backend)


def test_mark_selection() -> None:
    best, method = make_mark()
    assert method == WIPEONFORK  # Linux 4.14 and later.
    forced, forced_method = make_mark(GETPID)
    assert forced_method == GETPID
    assert best[0] == 1 and forced[0] == 1  # Armed in the process that made it.


def test_uwsgi_hook_detection() -> None:
    from django_forksafe.contrib.uwsgi import post_fork

    def someone_elses() -> None:
        pass

    assert uwsgi_detection.hook_installed(types.SimpleNamespace(post_fork_hook=post_fork))
    assert not uwsgi_detection.hook_installed(types.SimpleNamespace(post_fork_hook=someone_elses))
    assert not uwsgi_detection.hook_installed(types.SimpleNamespace())
    assert uwsgi_detection.hook_missing() is None  # Not under uWSGI here.


@pytest.mark.parametrize("kind", ["folder", "module"])
def test_a_project_file_named_uwsgi_is_not_uwsgi(kind: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # A uwsgi/ folder of .ini files, or a WSGI module named uwsgi.py, beside
    # manage.py: neither is taken for uWSGI, nor imported.
    if kind == "folder":
        (tmp_path / "uwsgi").mkdir()
    else:
        (tmp_path / "uwsgi.py").write_text("raise AssertionError('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert not uwsgi_detection.running_under_uwsgi()
    assert uwsgi_detection.hook_missing() is None


def test_the_c_extension_knows_a_connection_to_a_recorded_server() -> None:
    """A new raw connection's peer is looked up in C (one getpeername(), no
    allocation) before Python does it the long way."""
    import gc
    import os
    import socket
    import weakref

    from django_forksafe.detection import NATIVE
    from tests.utils import skip_or_fail

    if NATIVE is None:
        skip_or_fail("the C extension is not built here (or DJANGO_FORKSAFE_NATIVE=0)")
    with socket.create_server(("127.0.0.1", 0)) as recorded, socket.create_server(("127.0.0.1", 0)) as other:
        endpoints.remember_server("127.0.0.1", recorded.getsockname()[1])
        with socket.create_connection(recorded.getsockname()) as to_recorded, socket.create_connection(
            other.getsockname()
        ) as to_other, open(os.devnull) as file:
            assert NATIVE.is_database_socket(to_recorded.fileno())
            assert not NATIVE.is_database_socket(to_other.fileno())
            assert not NATIVE.is_database_socket(file.fileno())  # Not a socket.
            assert not NATIVE.is_database_socket(recorded.fileno())  # Not connected.
            assert not NATIVE.is_database_socket(-1)

    class Connection:
        pass

    kept = Connection()
    reference = weakref.ref(kept)
    NATIVE.keep_forever(kept)
    del kept
    gc.collect()
    assert reference() is not None  # Never freed: its deallocator never runs.


def test_a_peer_not_read_at_first_is_read_at_the_next_checkout(caplog: pytest.LogCaptureFixture) -> None:
    """A pool hands the same raw connection out again and again: one whose
    server address could not be read the first time (its socket not
    connected yet, here) is looked at again at its next checkout, and
    recorded then. Only a recorded one is passed over after."""
    import logging
    import socket

    class RawConnection:  # A pure-Python driver's: its socket object as _sock (PyMySQL).
        def __init__(self) -> None:
            self._sock = socket.socket()

    with socket.create_server(("127.0.0.1", 0)) as server:
        raw = RawConnection()
        try:
            with caplog.at_level(logging.WARNING, logger="django_forksafe"):
                endpoints.remember_peer(raw, "mysql")
            assert "could not read the server address" in caplog.text
            raw._sock.connect(server.getsockname())
            peer = endpoints.peer_of(raw._sock)
            assert peer is not None and not endpoints.is_server(peer)
            endpoints.remember_peer(raw, "mysql")  # Its next checkout.
            assert endpoints.is_server(peer)
        finally:
            raw._sock.close()


def test_a_failure_during_invalidation_is_logged_and_the_rest_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    from django_forksafe.registry import logged

    with caplog.at_level("ERROR", logger="django_forksafe"), logged("could not drop an inherited thing"):
        raise ValueError("broken")
    record = caplog.records[-1]
    assert record.getMessage() == "django-forksafe could not drop an inherited thing"
    assert record.exc_info is not None and record.exc_info[0] is ValueError
    with pytest.raises(KeyboardInterrupt), logged("never swallowed"):
        raise KeyboardInterrupt


def test_the_scan_says_when_it_has_no_descriptor_to_work_with() -> None:
    """With the hard limit on descriptors reached too (no headroom), the
    pure-Python scan fails with EMFILE (for invalidation's logged() to
    report): it does not take the missing descriptor for a missing /proc and
    find nothing."""
    import errno
    import os
    import resource

    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        outcome = "no error"
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
            try:
                while True:
                    os.open(os.devnull, os.O_RDONLY)
            except OSError:
                pass
            try:
                with silencing.headroom():
                    silencing._silence_database_sockets()
            except OSError as error:
                outcome = errno.errorcode.get(error.errno or 0, str(error.errno))
        finally:
            os.write(writing, outcome.encode())
            os._exit(0)
    os.close(writing)
    with os.fdopen(reading) as report:
        outcome = report.read()
    os.waitpid(pid, 0)
    assert outcome == "EMFILE"


def test_a_backends_own_database_error_wrapper_is_left_as_it_is() -> None:
    """Without the C extension, the mixin checks the mark where Django's
    error wrapper is entered, and only there: a backend with an error wrapper
    of its own keeps it, as under Django's plain ENGINE."""
    import os
    import subprocess
    import sys

    from tests import IMPORT_PATH

    code = (
        "import django\n"
        "from django.conf import settings\n"
        "settings.configure()\n"
        "django.setup()\n"
        "from django.db.backends.sqlite3 import base\n"
        "from django.db.utils import DatabaseErrorWrapper, load_backend\n"
        "from django.utils.functional import cached_property\n"
        "from django_forksafe import forksafe\n"
        "class OwnErrors(DatabaseErrorWrapper):\n    pass\n"
        "class Own(base.DatabaseWrapper):\n"
        "    @cached_property\n"
        "    def wrap_database_errors(self):\n        return OwnErrors(self)\n"
        "settings_dict = {'NAME': ':memory:', 'ENGINE': 'x'}\n"
        "ours = load_backend('django_forksafe.backends.sqlite3').DatabaseWrapper(settings_dict, 'a')\n"
        "theirs = forksafe(Own)(settings_dict, 'b')\n"
        "print(type(ours.wrap_database_errors).__name__, type(theirs.wrap_database_errors).__name__)\n"
    )
    process = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": IMPORT_PATH, "DJANGO_FORKSAFE_NATIVE": "0"},
        capture_output=True, text=True, timeout=60,
    )
    assert process.stdout.split() == ["_CheckedDatabaseErrorWrapper", "OwnErrors"], process.stderr


@pytest.mark.parametrize("built", [True, False])
def test_a_built_forky_chroot_is_a_full_environment(built: bool, tmp_path: Any) -> None:
    """make test adds this Python's full environment where none of the full
    ones asked for has its interpreter, unless the forky chroot, which runs
    the whole suite, is built (the fresh-Debian proof ran both, 35 minutes
    more)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    if built:
        (tmp_path / "etc").mkdir()
        (tmp_path / "etc" / "django-forksafe-forky").write_text("")
    script = Path(__file__).parent / "machine" / "interpreters.py"
    process = subprocess.run(
        [sys.executable, str(script), "select", "forky,py399-django52-core,unit"],
        capture_output=True, text=True, check=True,
        env={**os.environ, "CI": "", "FORKSAFE_FORKY_ROOT": str(tmp_path)},
    )
    chosen = process.stdout.strip().split(",")
    assert ("forky" in chosen and "unit" in chosen and "py399-django52-core" not in chosen)
    assert (len(chosen) == 2) is built, chosen
