"""
TLS: a child's shutdown of an inherited session would send TLS close_notify
(and the driver's goodbye) inside the parent's encrypted stream. Against
TLS-only servers started for these tests, the parent's session survives
children that close, exit and garbage-collect; the plain ENGINE's does not.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests import dbconfig, tls
from tests.utils import MECHANISMS, assert_kept_session, run, run_with, skip_or_fail
from tests.wire import children_on_the_wire

STARTERS = {"postgresql": tls.postgresql, "mysql": tls.mariadb}
# What the parent sees once its TLS session is broken (libpq and MariaDB's client words).
TLS_LOST = (
    "SSL error",
    "SSL SYSCALL error",
    "SSL connection has been closed unexpectedly",
    "decryption failed or bad record mac",
    "server closed the connection",
    "Lost connection",
    "gone away",
    "EOF",
)


@pytest.fixture(scope="module", params=dbconfig.SERVER_VENDORS)
def tls_server(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[str, str]]]:
    vendor: str = request.param
    try:
        with STARTERS[vendor]() as env:
            yield vendor, env
    except tls.Unavailable as exc:
        skip_or_fail(f"TLS {vendor} server: {exc}")


@pytest.fixture
def vendor(tls_server: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> str:
    """The vendor, with FORKSAFE_* pointing at its TLS-only server."""
    name, env = tls_server
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return name


def test_sessions_are_encrypted(vendor: str) -> None:
    assert run("tls_in_use", vendor)["cipher"]


@pytest.mark.parametrize(
    "scenario", ["child_closes", "child_closes_all", "child_exits", "child_drops_connection", "other_thread"]
)
def test_tls_session_survives_children(vendor: str, scenario: str) -> None:
    result: dict[str, Any] = run(scenario, vendor)
    assert_kept_session(result)  # For other_thread, the other thread's session.


@pytest.mark.parametrize("scenario", ["child_closes", "child_closes_all"])
def test_control_tls_session_broken_by_child(vendor: str, scenario: str) -> None:
    result = run(scenario, vendor, "plain")
    assert result["parent_error"] is not None
    assert any(words in result["parent_error"] for words in TLS_LOST), result["parent_error"]
    assert not result["parent_session_on_server"]


@pytest.mark.usefixtures("tcpdump")
def test_not_a_byte_on_the_parents_tls_connections(vendor: str) -> None:
    """Not even a close_notify: tests/test_wire.py's proof, over TLS."""
    seen = children_on_the_wire(vendor, "forksafe")
    assert seen["packets"] == []
    assert seen["after"] == seen["before"]


@pytest.mark.usefixtures("tcpdump")
def test_control_children_talk_on_the_parents_tls_connections(vendor: str) -> None:
    seen = children_on_the_wire(vendor, "plain")
    assert seen["packets"]
    assert seen["after"] != seen["before"]


@MECHANISMS
@pytest.mark.parametrize("fork", ["fork", "libc_fork"])
def test_query_on_silenced_tls_connection_with_default_sigpipe_is_an_error(
    vendor: str, fork: str, native: str
) -> None:
    """OpenSSL (libmariadb's, libpq's) writing on the dead end, in a child
    with SIGPIPE at SIG_DFL: an error at once. Not death by SIGPIPE (a
    socket pair's closed end), nor a write retried for ever (an unconnected
    socket's ENOTCONN, which OpenSSL retries: the run's timeout fails it)."""
    result = run_with(f"{fork}_write_with_default_sigpipe", vendor, native=native)
    assert result.get("child_error") is None and result["child_exit_status"] == 0, result
    assert result["raw_query_error"] is not None
    assert_kept_session(result)


def test_control_query_on_inherited_tls_connection_runs_on_parent_session(vendor: str) -> None:
    assert run("fork_write_with_default_sigpipe", vendor, "plain")["raw_query_error"] is None
