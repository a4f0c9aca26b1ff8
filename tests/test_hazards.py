"""
Each fork hazard, run for real by tests/hazards.py in a fresh process, with
the forksafe ENGINE, and with Django's plain ENGINE as the control wherever
the plain ENGINE fails deterministically.
"""

from __future__ import annotations

import pytest

from tests import dbconfig
from tests.hazards import LIBC_FORK_TRIGGERS
from tests.utils import (
    LOST_SESSION,
    SERVERS,
    assert_child_committed_parent_transaction,
    assert_child_outside_parent_transaction,
    assert_child_reconnected,
    assert_every_reply_right_from_own_session,
    assert_kept_session,
    assert_lost_session,
    assert_pool_workers_have_sessions_of_their_own,
    assert_pool_workers_lost_writes_with_parent_transaction,
    require_native,
    run,
)

CHILD_CLEANUPS = ["child_closes", "child_closes_all", "child_closes_old_connections"]


@SERVERS
@pytest.mark.parametrize("scenario", CHILD_CLEANUPS)
def test_child_cleanup_keeps_parent_session(scenario: str, vendor: str) -> None:
    assert_kept_session(run(scenario, vendor))


@SERVERS
@pytest.mark.parametrize("scenario", CHILD_CLEANUPS)
def test_control_child_cleanup_ends_parent_session(scenario: str, vendor: str) -> None:
    assert_lost_session(run(scenario, vendor, "plain"))


@SERVERS
@pytest.mark.parametrize("scenario", ["child_drops_connection", "child_exits"])
def test_child_gc_and_exit_keep_parent_session(scenario: str, vendor: str) -> None:
    result = run(scenario, vendor)
    assert result["child_exit_status"] == 0
    assert_kept_session(result)


@pytest.mark.parametrize("scenario", ["child_drops_connection", "child_exits"])
def test_control_mysqlclient_deallocator_ends_parent_session(scenario: str) -> None:
    # psycopg sends nothing from its deallocator, so only MySQL has a control.
    assert_lost_session(run(scenario, "mysql", "plain"))


@SERVERS
def test_other_threads_connection_survives_child(vendor: str) -> None:
    result = run("other_thread", vendor)
    assert result["connection_created_in_child"]
    assert_kept_session(result)  # The other thread's.


def test_control_other_threads_connection_ended_by_child() -> None:
    assert_lost_session(run("other_thread", "mysql", "plain"))


@SERVERS
def test_child_opens_its_own_session(vendor: str) -> None:
    result = run("child_queries", vendor)
    assert_child_reconnected(result)
    assert_kept_session(result)


@SERVERS
def test_control_child_shares_parent_session(vendor: str) -> None:
    result = run("child_queries", vendor, "plain")
    assert result["child_session"] == result["parent_session"]


FORK_IN_ATOMIC = ["fork_in_atomic", "fork_in_nested_atomic", "libc_fork_in_atomic"]


@SERVERS
@pytest.mark.parametrize("scenario", FORK_IN_ATOMIC)
def test_child_forked_inside_atomic_is_a_process_of_its_own(scenario: str, vendor: str) -> None:
    assert_child_outside_parent_transaction(run(scenario, vendor))


@SERVERS
@pytest.mark.parametrize("scenario", FORK_IN_ATOMIC)
def test_control_child_leaving_atomic_commits_parent_transaction(scenario: str, vendor: str) -> None:
    result = run(scenario, vendor, "plain")
    assert_child_committed_parent_transaction(result)
    if scenario == "fork_in_nested_atomic":  # The child released the parent's savepoint.
        assert any(
            words in result["error_leaving_block"]
            for words in ("does not exist", "can only be used in transaction blocks")  # psycopg 3, psycopg2
        ), result["error_leaving_block"]


@SERVERS
@pytest.mark.parametrize("scenario", ["fork_in_atomic_child_only_leaves", "libc_fork_in_atomic_child_only_leaves"])
def test_leaving_inherited_atomic_sends_nothing_and_opens_nothing(scenario: str, vendor: str) -> None:
    result = run(scenario, vendor)
    assert "error_after_block" not in result, result
    assert result["connected_after_leaving"] is False
    assert result["committed_before_rollback"] == [3]  # Written after leaving.
    assert result["session_after_block"] != result["parent_session"]
    assert result["on_commit_ran_in_child"] is False
    assert result["committed_after_rollback"] == [3]
    assert result["parent_same_session"]


@SERVERS
@pytest.mark.parametrize("scenario", ["fork_in_atomic_child_only_leaves", "libc_fork_in_atomic_child_only_leaves"])
def test_control_leaving_inherited_atomic_commits(scenario: str, vendor: str) -> None:
    result = run(scenario, vendor, "plain")
    assert result["committed_before_rollback"] == [1, 3]
    assert result["on_commit_ran_in_child"] is True


@SERVERS
def test_child_killed_inside_atomic_takes_only_its_own_session(vendor: str) -> None:
    result = run("child_killed_in_atomic", vendor)
    assert result["child_killed"]
    assert result["visible_to_others"] == [2]  # The parent's write, committed.
    assert result["parent_same_session"]


@SERVERS
def test_control_child_killed_inside_atomic_leaves_parent_in_its_transaction(vendor: str) -> None:
    result = run("child_killed_in_atomic", vendor, "plain")
    assert result["child_killed"]
    assert result["visible_to_others"] == []


POOLS_IN_ATOMIC = ["multiprocessing_pool_started_in_atomic", "process_pool_executor_started_in_atomic"]


@SERVERS
@pytest.mark.parametrize("scenario", POOLS_IN_ATOMIC)
def test_process_pool_started_inside_atomic_keeps_serving(scenario: str, vendor: str) -> None:
    assert_pool_workers_have_sessions_of_their_own(run(scenario, vendor))


@SERVERS
@pytest.mark.parametrize("scenario", POOLS_IN_ATOMIC)
def test_control_process_pool_started_inside_atomic(scenario: str, vendor: str) -> None:
    assert_pool_workers_lost_writes_with_parent_transaction(run(scenario, vendor, "plain"))


@SERVERS
def test_parent_and_children_query_concurrently(vendor: str) -> None:
    assert_every_reply_right_from_own_session(run("concurrent", vendor))


@SERVERS
def test_no_leaked_sessions_after_50_children(vendor: str) -> None:
    result = run("leak_cycles", vendor)
    assert result["distinct_child_sessions"] == 50
    assert result["new_sessions"] == []  # Besides the parent's own.
    assert_kept_session(result)


@SERVERS
def test_control_first_child_ends_parent_session(vendor: str) -> None:
    assert_lost_session(run("leak_cycles", vendor, "plain"))


@SERVERS
def test_registry_does_not_leak_in_parent(vendor: str) -> None:
    result = run("thread_dies_unclosed", vendor)
    assert result["thread_session_opened"]
    assert result["registry_after"] == 0
    assert result["new_sessions"] == []


LIBC_FORK_DETECTIONS = [f"libc_fork_{trigger}" for trigger in LIBC_FORK_TRIGGERS]


@SERVERS
@pytest.mark.parametrize("scenario", LIBC_FORK_DETECTIONS)
def test_fork_without_at_fork_handlers_noticed_before_first_byte(scenario: str, vendor: str) -> None:
    result = run(scenario, vendor)
    assert_child_reconnected(result)
    assert_kept_session(result)


@pytest.mark.parametrize(
    "scenario, vendor",
    [
        (scenario, vendor)
        for scenario in LIBC_FORK_DETECTIONS
        for vendor in dbconfig.SERVER_VENDORS
        # psycopg sends nothing from its deallocator, and the child's new
        # wrapper opens a session of its own: no failure to show.
        if (scenario, vendor) != ("libc_fork_drop_then_request", "postgresql")
    ],
)
def test_control_fork_without_at_fork_handlers(scenario: str, vendor: str) -> None:
    result = run(scenario, vendor, "plain")
    if result["parent_error"] is None:
        # Nothing broke yet: the child is running on the parent's session.
        assert result["child_session"] == result["parent_session"]
    else:
        assert_lost_session(result)


@SERVERS
@pytest.mark.parametrize("scenario", ["libc_fork_query", "libc_fork_in_atomic", "libc_fork_child_exits"])
def test_getpid_fallback(scenario: str, vendor: str) -> None:
    """Where the kernel refuses MADV_WIPEONFORK, os.getpid() does the same."""
    result = run(scenario, vendor, DJANGO_FORKSAFE_DETECTION="getpid")
    assert result["detection"] == "getpid"
    if scenario == "libc_fork_in_atomic":
        assert result["committed_after_rollback"] == [2, 3]
    else:
        assert_kept_session(result)


@SERVERS
def test_libc_fork_concurrent_first_queries(vendor: str) -> None:
    result = run("libc_fork_concurrent", vendor)
    assert result["detection"] == "MADV_WIPEONFORK"
    assert_every_reply_right_from_own_session(result)


@SERVERS
def test_libc_forked_child_exiting_keeps_parent_session(vendor: str) -> None:
    result = run("libc_fork_child_exits", vendor)
    assert result["child_exit_status"] == 0
    assert_kept_session(result)


def test_control_libc_forked_child_exiting_ends_parent_session() -> None:
    # psycopg sends nothing from its deallocator, so only MySQL has a control.
    assert_lost_session(run("libc_fork_child_exits", "mysql", "plain"))


@SERVERS
def test_at_fork_handler_silences_before_the_child_runs(vendor: str) -> None:
    # Only the at-fork handler runs before the child closes the driver's
    # connection itself; no checkout is involved.
    assert_kept_session(run("child_closes_raw_connection", vendor))


@SERVERS
def test_control_child_closes_raw_connection(vendor: str) -> None:
    assert_lost_session(run("child_closes_raw_connection", vendor, "plain"))


@SERVERS
def test_failure_to_silence_still_forgets_inherited_connection(vendor: str) -> None:
    """Out of descriptors at its first query, the child forgets the inherited
    connection all the same (the C extension needs no descriptor; without
    it, silencing takes a moment's headroom above the limit, and then frees
    the inherited number, so that the first query may even connect)."""
    from django_forksafe.detection import NATIVE

    result = run("libc_fork_out_of_descriptors", vendor)
    if NATIVE is not None:
        assert result["first_query"] != "succeeded"  # No descriptor for a connection of its own.
    assert result["holds_inherited"] is False
    assert result["child_session"] != result["parent_session"]  # Once descriptors are back.
    assert_kept_session(result)


@SERVERS
def test_control_out_of_descriptors_child_runs_on_parent_session(vendor: str) -> None:
    result = run("libc_fork_out_of_descriptors", vendor, "plain")
    assert result["first_query"] == "succeeded" and result["holds_inherited"] is True


@SERVERS
def test_raw_connection_outside_django_silenced_in_child(vendor: str) -> None:
    result = run("raw_connection_outside_django", vendor)
    assert result["raw_error"] is None
    assert result["raw_same_session"] and result["raw_session_on_server"]


@SERVERS
def test_control_raw_connection_outside_django(vendor: str) -> None:
    result = run("raw_connection_outside_django", vendor, "plain")
    assert any(message in result["raw_error"] for message in LOST_SESSION), result
    assert not result["raw_session_on_server"]


def test_raw_connection_in_other_threads_local_kept_by_the_c_extension() -> None:
    """Only fork() itself silences a socket whose connection CPython frees in
    the child before any Python hook runs (README, Limits)."""
    require_native()
    result = run("raw_connection_in_other_threads_local", "mysql", DJANGO_FORKSAFE_NATIVE="1")
    assert result["raw_error"] is None
    assert result["raw_same_session"]


@pytest.mark.parametrize("engine", ["forksafe", "plain"])
def test_control_raw_connection_in_other_threads_local_lost_on_the_pure_python_path(engine: str) -> None:
    """The limit README states: without the C extension (and with Django's
    ENGINE), mysqlclient's deallocator says COM_QUIT from CPython's own
    after-fork clean-up. (psycopg says nothing when freed: MySQL only.)"""
    result = run("raw_connection_in_other_threads_local", "mysql", engine, DJANGO_FORKSAFE_NATIVE="0")
    assert any(message in str(result["raw_error"]) for message in LOST_SESSION), result


def server_sockets(descriptors: dict[str, str], vendor: str) -> dict[str, str]:
    port = dbconfig.server(vendor)["PORT"]
    return {fd: kind for fd, kind in descriptors.items() if kind.startswith("socket") and f", {port})" in kind}


PROGRAMS = ("vfork", "fork", "fork_close_fds_false")


@SERVERS
def test_subprocess_run_unchanged(vendor: str) -> None:
    """A program run by subprocess sees what it sees under the plain ENGINE,
    less any session of the parent's; the parent keeps its sessions. (The C
    handler runs in subprocess's fork too: that is what is tested.)"""
    require_native()
    ours, plain = run("subprocess_run", vendor), run("subprocess_run", vendor, "plain")
    assert ours["parent_same_session"] and ours["raw_same_session"]
    for program in PROGRAMS:
        descriptors = ours[f"{program}_descriptors"]
        assert server_sockets(descriptors, vendor) == {}
        assert set(descriptors) <= set(plain[f"{program}_descriptors"])  # No dead end leaked.
        others = {fd: kind for fd, kind in descriptors.items() if not kind.startswith("socket")}
        assert others == {
            fd: kind for fd, kind in plain[f"{program}_descriptors"].items() if not kind.startswith("socket")
        }


def test_control_subprocess_run_program_holds_parents_sessions() -> None:
    """MariaDB's client leaves its sockets inheritable: with close_fds=False,
    the program gets the parent's live sessions."""
    result = run("subprocess_run", "mysql", "plain")
    assert len(server_sockets(result["fork_close_fds_false_descriptors"], "mysql")) == 2


@SERVERS
@pytest.mark.parametrize("scenario", ["registry_lock_held_at_fork", "signal_lock_held_at_fork"])
def test_lock_held_by_another_thread_at_fork_cannot_deadlock_child(scenario: str, vendor: str) -> None:
    result = run(scenario, vendor)
    assert_child_reconnected(result)
    assert_kept_session(result)


@SERVERS
@pytest.mark.parametrize("scenario", ["libc_fork_middleware", "libc_fork_async_middleware"])
def test_middleware_detects_fork_by_pid(scenario: str, vendor: str) -> None:
    result = run(scenario, vendor)
    assert_child_reconnected(result)
    assert_kept_session(result)


@SERVERS
@pytest.mark.parametrize("scenario", ["libc_fork_middleware", "libc_fork_async_middleware"])
def test_control_middleware_on_plain_engine(scenario: str, vendor: str) -> None:
    result = run(scenario, vendor, "plain")
    assert result["child_session"] == result["parent_session"]


@SERVERS
@pytest.mark.parametrize("scenario", ["post_fork_signal", "libc_fork_post_fork_signal"])
def test_post_fork_signal_once_after_invalidation(scenario: str, vendor: str) -> None:
    result = run(scenario, vendor)
    # Exactly once in the child (although it closed and reconnected twice),
    # with the parent's PID and the alias, while the connection was closed.
    assert result["signals"] == [
        {"parent_pid": result["parent_pid"], "aliases": ["default"], "connection": True}
    ]
    assert result["parent_signals"] == []
    # Through Python's fork, the at-fork handler sent it before the child ran.
    assert result["signalled_at_start"] == (1 if scenario == "post_fork_signal" else 0)
    assert_kept_session(result)


@SERVERS
def test_post_fork_in_a_grandchild_names_its_parent(vendor: str) -> None:
    # The grandchild's receiver, connected in it, hears post_fork at its
    # first query where the C extension defers invalidation to then; its
    # parent has exited by then (a daemonizing double fork).
    require_native()
    result = run("post_fork_in_grandchild", vendor)
    assert result["heard_parent_pids"] == [result["middle_pid"]]
    assert result["connection_created_in_child"] is True
    assert_kept_session(result)


def test_several_aliases_and_vendors() -> None:
    result = run("several_aliases", "postgresql")
    for alias, parent in result["parents"].items():
        assert parent["parent_error"] is None, alias
        assert parent["parent_same_session"] and parent["parent_session_on_server"], alias
        assert result["child_sessions"][alias] != result["parent_sessions"][alias]
    assert result["child_sqlite_reopened"]


def test_control_several_aliases() -> None:
    result = run("several_aliases", "postgresql", "plain")
    assert all(parent["parent_error"] for parent in result["parents"].values())


def test_sqlite_file_handle_never_used_or_closed_in_child() -> None:
    result = run("sqlite_file", "sqlite3")
    assert result["inherited_handle_used"] is False
    assert result["inherited_handle_open"] is True
    assert result["parent_rows"] == [1, 2]  # The child's own handle wrote row 2.
    assert result["parent_same_raw"]


def test_control_sqlite_file_handle_used_in_child() -> None:
    result = run("sqlite_file", "sqlite3", "plain")
    assert result["inherited_handle_used"] is True


def test_sqlite_memory_database_is_a_private_copy_in_child() -> None:
    result = run("sqlite_memory", "sqlite3")
    assert result["child_sees"] == [1]
    assert result["child_after_close"] == [1, 2]
    assert result["parent_rows"] == [1]
    assert result["parent_same_raw"]


def needs_psycopg3() -> None:
    try:
        import psycopg_pool  # noqa: F401
    except ImportError:
        pytest.skip("Django's connection pool needs psycopg 3 and psycopg_pool")


def test_connection_pool() -> None:
    needs_psycopg3()
    result = run("pool", "postgresql")
    assert_kept_session(result)
    parent_pool = set(result["parent_pool_sessions"])
    for child in result["children"]:
        assert not parent_pool & set(child["sessions"])  # Sessions of its own.
    assert result["parent_pool_alive"]
    assert result["parent_errors"] == []  # Every pooled connection still works.
    assert result["parent_reused_pool"]


def test_django_pool_of_a_plain_alias_is_dropped_in_child_too() -> None:
    needs_psycopg3()
    result = run("pool_beside_plain_alias", "postgresql")
    parent_pools = set(result["parent_pools"])
    assert result["default"] not in parent_pools
    assert result["plain"] not in parent_pools  # Protected too: the dict is shared.
    assert result["parent_pools_alive"]


def test_connection_pool_opened_but_never_used_through_django() -> None:
    needs_psycopg3()
    result = run("pool_warmed_up", "postgresql")
    parent_pool = set(result["parent_pool_sessions"])
    assert parent_pool
    for child in result["children"]:
        assert not parent_pool & set(child["sessions"])
    assert result["parent_pool_alive"]


def test_control_connection_pool_opened_but_never_used() -> None:
    needs_psycopg3()
    result = run("pool_warmed_up", "postgresql", "plain")
    parent_pool = set(result["parent_pool_sessions"])
    assert all(set(child["sessions"]) <= parent_pool for child in result["children"])


def test_control_connection_pool_children_use_parent_sessions() -> None:
    needs_psycopg3()
    result = run("pool", "postgresql", "plain")
    parent_pool = set(result["parent_pool_sessions"])
    assert all(set(child["sessions"]) <= parent_pool for child in result["children"])


# A third-party backend through forksafe(), and Django's through a project's
# own mixin (class ProjectMixin(ForkSafeMixin), then class W(ProjectMixin, Backend)).
@pytest.mark.parametrize("engine", ["thirdparty-forksafe", "projectmixin-forksafe"])
@pytest.mark.parametrize("scenario", ["child_closes", "child_queries", "fork_in_atomic", "libc_fork_query"])
def test_third_party_backend_made_forksafe(scenario: str, engine: str) -> None:
    result = run(scenario, "postgresql", engine)
    if scenario == "fork_in_atomic":
        assert result["committed_after_rollback"] == [2, 3]
    else:
        assert_kept_session(result)
    if scenario in ("child_queries", "libc_fork_query"):  # libc: through the backend's own cursor().
        assert_child_reconnected(result)


def test_control_third_party_backend() -> None:
    assert_lost_session(run("child_closes", "postgresql", "thirdparty"))


@pytest.mark.parametrize("scenario", ["pool", "pool_warmed_up"])
def test_django_pool_through_a_project_mixin(scenario: str) -> None:
    """Django's pool dict is watched through a project's mixin too: the
    children never use the parent's pooled sessions (the control is
    test_control_connection_pool_*, on Django's plain ENGINE)."""
    needs_psycopg3()
    result = run(scenario, "postgresql", "projectmixin-forksafe")
    parent_pool = set(result["parent_pool_sessions"])
    assert parent_pool
    for child in result["children"]:
        assert not parent_pool & set(child["sessions"])
    assert result["parent_pool_alive"]
    if scenario == "pool":
        assert_kept_session(result)
        assert result["parent_errors"] == []
