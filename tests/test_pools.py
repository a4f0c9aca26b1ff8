"""
Third-party connection pools (django-db-connection-pool on MySQL and
PostgreSQL, django-db-geventpool on PostgreSQL), each made fork-safe with
forksafe() in a three-line base.py, and each as is for the control.
"""

from __future__ import annotations

import pytest

from tests import dbconfig
from tests.test_hazards import run


@pytest.fixture(autouse=True)
def libraries() -> None:
    """The pool libraries are in the test extra: missing, they fail in CI."""
    for module in ("dj_db_conn_pool", "django_db_geventpool", "gevent"):
        try:
            __import__(module)
        except ImportError as exc:
            if dbconfig.in_ci():
                pytest.fail(f"{module} is not installed ({exc}): pip install -e '.[test]'")
            pytest.skip(f"{module} is not installed")

POOLS = pytest.mark.parametrize(
    "library, vendor", [("connpool", "mysql"), ("connpool", "postgresql"), ("geventpool", "postgresql")]
)


@POOLS
def test_child_gets_a_fresh_pool_and_sessions_of_its_own(library: str, vendor: str) -> None:
    result = run(f"{library}_pool", vendor)
    assert result["fresh_pool"]
    assert not set(result["sessions"]) & set(result["parent_pool"])
    assert result["parent_pool_alive"]
    assert result["parent_error"] is None
    assert result["parent_session_after"] in result["parent_pool"]  # Its pool still serves it.


@POOLS
def test_control_child_runs_on_parent_pooled_session(library: str, vendor: str) -> None:
    result = run(f"{library}_pool", vendor, "plain")
    assert result["fresh_pool"] is False
    assert set(result["sessions"]) <= set(result["parent_pool"])


@POOLS
def test_child_that_only_exits_leaves_parent_pool_alive(library: str, vendor: str) -> None:
    result = run(f"{library}_pool_child_exits", vendor)
    assert result["child_exit_status"] == 0
    assert result["parent_pool_alive"]
    assert result["parent_session_after"] in result["parent_pool"]


def test_control_child_exit_ends_parent_pooled_session() -> None:
    # mysqlclient's deallocator sends COM_QUIT as the inherited pool is freed;
    # the pool then silently hands the parent a new session.
    result = run("connpool_pool_child_exits", "mysql", "plain")
    assert not result["parent_pool_alive"]
    assert result["parent_session_after"] not in result["parent_pool"]
