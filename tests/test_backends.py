"""
Every third-party backend and driver of tests.backends, made fork-safe by
forksafe() in the README's three-line base.py: PyMySQL, mysql-connector-python
(C extension and pure Python), django-prometheus (MySQL, PostgreSQL, and
Django's pool), django-db-connection-pool (MySQL, PostgreSQL) and
django-db-geventpool (with the environment's psycopg). Each hazard, and the
same with the backend as is for the control wherever that fails
deterministically.
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from tests.backends import BACKENDS
from tests.hazards.pools import POOL_SIZE
from tests.utils import (
    LOST_SESSION,
    assert_child_committed_parent_transaction,
    assert_child_outside_parent_transaction,
    assert_child_reconnected,
    assert_every_reply_right_from_own_session,
    assert_kept_session,
    assert_lost_session,
    assert_pool_workers_have_sessions_of_their_own,
    assert_pool_workers_lost_writes_with_parent_transaction,
    run,
    skip_or_fail,
)

ALL = pytest.mark.parametrize("backend", list(BACKENDS))
POOLS = pytest.mark.parametrize("backend", [name for name, backend in BACKENDS.items() if backend.pool])
# Without a pool of their own, close() really closes: the driver says goodbye
# on the shared socket. A pool takes the connection back instead (the
# child then runs on the parent's pooled sessions: see the pool tests).
WITHOUT_POOL = pytest.mark.parametrize("backend", [name for name, backend in BACKENDS.items() if not backend.pool])
# Only a deallocator that says goodbye makes the child's exit a failure.
GOODBYE_WHEN_FREED = pytest.mark.parametrize(
    "backend", [name for name, backend in BACKENDS.items() if backend.goodbye_when_freed]
)
# Drivers without fileno(): the child cannot point the descriptor elsewhere
# through the driver; the socket layer finds it by its peer.
WITHOUT_FILENO = pytest.mark.parametrize(
    "backend", [name for name, backend in BACKENDS.items() if not backend.has_fileno]
)


def run_backend(scenario: str, backend: str, forksafe: bool = True) -> dict[str, Any]:
    for module in BACKENDS[backend].requires:  # The test extra's: missing, they fail in CI.
        try:
            importlib.import_module(module)
        except ImportError as exc:
            skip_or_fail(f"{module} is not installed ({exc}): pip install -e '.[test]'")
    result = run(scenario, BACKENDS[backend].vendor, f"{backend}-forksafe" if forksafe else backend)
    expected_driver = BACKENDS[backend].driver_class
    if expected_driver is not None:  # The driver this case is about, not another one.
        assert result["driver_classes"] == [expected_driver]
    return result


@ALL
def test_child_closes(backend: str) -> None:
    assert_kept_session(run_backend("child_closes", backend))


@WITHOUT_POOL
def test_control_child_closes(backend: str) -> None:
    assert_lost_session(run_backend("child_closes", backend, forksafe=False))


@ALL
def test_child_exits(backend: str) -> None:
    result = run_backend("child_exits", backend)
    assert result["child_exit_status"] == 0
    assert_kept_session(result)


@GOODBYE_WHEN_FREED
def test_control_child_exits(backend: str) -> None:
    assert_lost_session(run_backend("child_exits", backend, forksafe=False))


@ALL
def test_child_forked_through_libc_queries(backend: str) -> None:
    """No at-fork handler ran: the first checkout notices the fork."""
    result = run_backend("libc_fork_query", backend)
    assert_child_reconnected(result)
    assert_kept_session(result)


@ALL
def test_control_child_forked_through_libc_queries(backend: str) -> None:
    result = run_backend("libc_fork_query", backend, forksafe=False)
    assert result["child_session"] == result["parent_session"]



@WITHOUT_FILENO
def test_driver_without_fileno_releases_inherited_socket(backend: str) -> None:
    """The parent's session ends when the parent dies, not when its last
    child does."""
    assert run_backend("parent_dies_child_lives", backend)["session_ended_with_parent"] is True


@WITHOUT_FILENO
def test_control_driver_without_fileno_session_outlives_parent(backend: str) -> None:
    result = run_backend("parent_dies_child_lives", backend, forksafe=False)
    assert result["session_ended_with_parent"] is False  # Within the 10 s bound.


@ALL
def test_parent_and_children_query_concurrently(backend: str) -> None:
    # No control: on one shared session the outcome is wrong replies,
    # errors or a hang, in no set order.
    assert_every_reply_right_from_own_session(run_backend("concurrent", backend))


@ALL
def test_fork_inside_atomic_then_parent_rolls_back(backend: str) -> None:
    assert_child_outside_parent_transaction(run_backend("fork_in_atomic", backend))


@ALL
def test_control_fork_inside_atomic(backend: str) -> None:
    assert_child_committed_parent_transaction(run_backend("fork_in_atomic", backend, forksafe=False))


@ALL
def test_multiprocessing_fork_pool_started_inside_atomic(backend: str) -> None:
    assert_pool_workers_have_sessions_of_their_own(run_backend("multiprocessing_pool_started_in_atomic", backend))


@ALL
def test_control_multiprocessing_fork_pool(backend: str) -> None:
    result = run_backend("multiprocessing_pool_started_in_atomic", backend, forksafe=False)
    assert_pool_workers_lost_writes_with_parent_transaction(result)


# The pool libraries: the parent's pool holds POOL_SIZE idle sessions when it
# forks; afterwards the parent takes every connection of it at once again.


def assert_parent_pool_intact(result: dict[str, Any]) -> None:
    assert len(result["parent_pool"]) == POOL_SIZE
    assert result["parent_errors"] == []
    assert result["parent_pool_after"] == result["parent_pool"]  # The very same sessions, each still working.
    assert result["parent_pool_alive"]


def assert_parent_pool_broken(result: dict[str, Any]) -> None:
    # The pool found its sessions dead and opened new ones, or failed.
    assert result["parent_errors"] or result["parent_pool_after"] != result["parent_pool"], result


@POOLS
def test_child_gets_a_fresh_pool_and_sessions_of_its_own(backend: str) -> None:
    result = run_backend("third_party_pool", backend)
    assert len(result["parent_pool_ports"]) == POOL_SIZE
    assert result["fresh_pool"]
    # Never one of the parent's, by session id and by client port.
    assert not set(result["sessions"]) & set(result["parent_pool"])
    assert not set(result["client_ports"]) & set(result["parent_pool_ports"])
    assert_parent_pool_intact(result)


@POOLS
def test_control_child_runs_on_parent_pooled_sessions(backend: str) -> None:
    result = run_backend("third_party_pool", backend, forksafe=False)
    assert result["fresh_pool"] is False
    assert set(result["sessions"]) <= set(result["parent_pool"])
    assert set(result["client_ports"]) <= set(result["parent_pool_ports"])


@POOLS
def test_child_that_only_exits_leaves_parent_pool_alive(backend: str) -> None:
    result = run_backend("third_party_pool_child_exits", backend)
    assert result["child_exit_status"] == 0
    assert_parent_pool_intact(result)


@pytest.mark.parametrize(
    "backend", [name for name, backend in BACKENDS.items() if backend.pool and backend.goodbye_when_freed]
)
def test_control_child_exit_ends_parent_pooled_sessions(backend: str) -> None:
    # The deallocator says goodbye on each idle connection as the inherited
    # pool is freed (psycopg's sends nothing); the pool then silently hands
    # the parent new sessions.
    assert_parent_pool_broken(run_backend("third_party_pool_child_exits", backend, forksafe=False))


# django-prometheus over Django's own PostgreSQL pool (psycopg 3).


def test_prometheus_over_django_pool() -> None:
    pytest.importorskip("psycopg_pool", reason="Django's connection pool needs psycopg 3")
    result = run_backend("pool", "prometheus_postgresql")
    assert_kept_session(result)
    parent_pool = set(result["parent_pool_sessions"])
    for child in result["children"]:
        assert not parent_pool & set(child["sessions"])
    assert result["parent_pool_alive"]
    assert result["parent_errors"] == []


def test_control_prometheus_over_django_pool() -> None:
    pytest.importorskip("psycopg_pool", reason="Django's connection pool needs psycopg 3")
    result = run_backend("pool", "prometheus_postgresql", forksafe=False)
    parent_pool = set(result["parent_pool_sessions"])
    assert all(set(child["sessions"]) <= parent_pool for child in result["children"])


# A pool that no adapter knows (tests.backends.unknown_pool, on MySQL): the
# socket layer alone still keeps every one of the parent's sessions.


def test_unknown_pool_parent_sessions_unreachable_from_child() -> None:
    result = run("unknown_pool", "mysql", "unknown_pool-forksafe")
    # The child's inherited idle connection reads as closed by the server...
    assert any(message in result["child_query_error"] for message in LOST_SESSION), result
    # ...and nothing of it reached the parent's sessions, not even at exit.
    assert result["child_exit_status"] == 0
    assert_parent_pool_intact(result)


def test_control_unknown_pool() -> None:
    result = run("unknown_pool", "mysql", "unknown_pool")
    assert result["child_session"] in result["parent_pool"]  # The parent's session.
    assert_parent_pool_broken(result)  # Ended by the child's exit.


@pytest.mark.parametrize(
    "scenario", ["unknown_pool_dropped_in_post_fork", "libc_fork_unknown_pool_dropped_in_post_fork"]
)
def test_unknown_pool_dropped_in_post_fork_receiver(scenario: str) -> None:
    result = run(scenario, "mysql", "unknown_pool-forksafe")
    assert result["child_session"] not in result["parent_pool"]
    assert_parent_pool_intact(result)
