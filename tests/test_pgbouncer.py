"""Through PgBouncer in transaction pooling mode, the same fork guarantees."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import dbconfig
from tests.pgbouncer import pgbouncer
from tests.tls import Unavailable
from tests.utils import run, skip_or_fail


@pytest.fixture(scope="module")
def bouncer_env() -> Iterator[dict[str, str]]:
    reason = dbconfig.unreachable_reason("postgresql")
    try:
        if reason is not None:
            raise Unavailable(reason)
        with pgbouncer() as env:
            yield env
    except Unavailable as exc:
        skip_or_fail(f"PgBouncer: {exc}")


@pytest.fixture(autouse=True)
def through_bouncer(bouncer_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in bouncer_env.items():
        monkeypatch.setenv(key, value)


def test_parent_keeps_its_pgbouncer_connection() -> None:
    result = run("through_pgbouncer", "postgresql")
    assert result["parent_error"] is None
    assert result["parent_answer"] == 42
    assert result["parent_same_raw"]
    assert result["parent_port_listed"]  # PgBouncer still serves the parent's client connection.
    assert result["child_port"] != result["parent_port"]


def test_control_child_close_ends_parent_pgbouncer_connection() -> None:
    result = run("through_pgbouncer", "postgresql", "plain")
    assert result["parent_error"] is not None
    assert not result["parent_port_listed"]


def test_fork_inside_atomic_through_pgbouncer() -> None:
    result = run("fork_in_atomic", "postgresql")
    assert "error_in_block" not in result and "error_leaving_block" not in result, result
    # The child's writes committed on its own; the parent's row stayed its own.
    assert result["committed_before_rollback"] == [2, 3]
    assert result["committed_after_rollback"] == [2, 3]


def test_control_fork_inside_atomic_through_pgbouncer() -> None:
    assert 1 in run("fork_in_atomic", "postgresql", "plain")["committed_after_rollback"]


def test_raw_connection_through_pgbouncer_silenced_in_child() -> None:
    """A driver connection opened outside Django, to PgBouncer as the
    settings name it: the socket layer silences it in the child too."""
    result = run("raw_connection_outside_django", "postgresql")
    assert result["raw_error"] is None


def test_control_raw_connection_through_pgbouncer() -> None:
    result = run("raw_connection_outside_django", "postgresql", "plain")
    assert "server closed the connection" in result["raw_error"], result
