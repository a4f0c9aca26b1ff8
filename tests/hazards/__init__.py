"""
Fork hazards, reproduced with real forks against real servers.

Run as ``python -m tests.hazards SCENARIO VENDOR ENGINE`` (ENGINE is one of
tests.dbconfig.ENGINES, such as ``forksafe`` or ``plain``): each scenario
runs in a fresh process, forks, and prints one JSON object of observations
for tests/test_hazards.py to judge. The hazards themselves are
django_forksafe.hazards', shared with forksafe_check; session checks go
through a separate monitor connection on the server side.
"""

from __future__ import annotations

import os

from django_forksafe.hazards import libc_fork
from tests.hazards import (
    basic,
    dead_ends,
    detection,
    pools,
    robustness,
    servers,
    sockets,
    sqlite,
    start_methods,
    state,
    transactions,
    unrecorded,
)
from tests.hazards.common import Monitor, Scenario

__all__ = ["LIBC_FORK_TRIGGERS", "SCENARIOS", "Monitor"]

LIBC_FORK_TRIGGERS = detection.LIBC_FORK_TRIGGERS

SCENARIOS: dict[str, Scenario] = {
    # What a child does with the connection it inherited.
    **{f"child_{name}": basic.child_cleanup(cleanup) for name, cleanup in [
        ("closes", "close"), ("closes_all", "close_all"), ("closes_old_connections", "close_old_connections")
    ]},
    "child_queries": basic.child_queries,
    "child_drops_connection": basic.child_drops_connection,
    "child_exits": basic.child_exits,
    "child_closes_raw_connection": basic.child_closes_raw_connection,
    "other_thread": basic.other_thread,
    "concurrent": basic.concurrent,
    "leak_cycles": basic.leak_cycles,
    "thread_dies_unclosed": basic.thread_dies_unclosed,
    "several_aliases": basic.several_aliases,
    # Sockets Django never saw.
    "raw_connection_outside_django": sockets.raw_connection_outside_django,
    "raw_connection_in_other_threads_local": sockets.raw_connection_in_other_threads_local,
    "parent_dies_child_lives": sockets.parent_dies_child_lives,
    "subprocess_run": sockets.subprocess_run,
    # Forks behind Python's back.
    "libc_fork_child_exits": lambda vendor, engine: basic.child_exits(vendor, engine, libc_fork),
    "libc_fork_concurrent": lambda vendor, engine: basic.concurrent(vendor, engine, libc_fork),
    **{f"libc_fork_{trigger}": detection.libc_fork_then(trigger) for trigger in LIBC_FORK_TRIGGERS},
    "post_fork_signal": detection.post_fork_signal(os.fork),
    "post_fork_in_grandchild": detection.post_fork_in_grandchild,
    "libc_fork_post_fork_signal": detection.post_fork_signal(libc_fork),
    "registry_lock_held_at_fork": detection.registry_lock_held_at_fork,
    "signal_lock_held_at_fork": detection.signal_lock_held_at_fork,
    "libc_fork_out_of_descriptors": detection.out_of_descriptors,
    # Forks that run no at-fork handler at all; dead ends that raise no signal.
    **{
        f"{name}_then_raw_connection": dead_ends.raw_fork_then_raw_connection(fork)
        for name, fork in dead_ends.RAW_FORKS.items()
    },
    **{
        f"{name}_write_with_default_sigpipe": dead_ends.write_with_default_sigpipe(fork)
        for name, fork in (("fork", os.fork), *dead_ends.RAW_FORKS.items())
    },
    "sys_fork_held_server_side_cursor": state.held_server_side_cursor(dead_ends.sys_fork),
    # Servers not in the endpoint table at the fork.
    **{
        f"{prefix}{name}": make(fork)
        for prefix, fork in (("", os.fork), ("libc_fork_", libc_fork))
        for name, make in (
            ("fork_between_track_and_peer", unrecorded.fork_between_track_and_peer),
            ("connection_takes_last_descriptor", unrecorded.connection_takes_last_descriptor),
        )
    },
    # Transactions.
    "fork_in_atomic": transactions.fork_in_atomic,
    "fork_in_nested_atomic": lambda vendor, engine: transactions.fork_in_atomic(vendor, engine, nested=True),
    "fork_in_atomic_child_only_leaves": lambda vendor, engine: transactions.fork_in_atomic(
        vendor, engine, child_writes_in_block=False, nested=True
    ),
    "libc_fork_in_atomic": lambda vendor, engine: transactions.fork_in_atomic(vendor, engine, libc_fork),
    "libc_fork_in_atomic_child_only_leaves": lambda vendor, engine: transactions.fork_in_atomic(
        vendor, engine, libc_fork, child_writes_in_block=False, nested=True
    ),
    "child_killed_in_atomic": transactions.child_killed_in_atomic,
    "multiprocessing_pool_started_in_atomic": transactions.pool_started_in_atomic("multiprocessing"),
    "process_pool_executor_started_in_atomic": transactions.pool_started_in_atomic("executor"),
    # A forkserver's preloaded modules opened a connection: every worker is its child.
    "forkserver_preload_connection": start_methods.forkserver_preload_connection,
    # CPython 3.12+ warns of a fork in a multi-threaded process: never ours.
    "threads_at_fork": start_methods.threads_at_fork(),
    "threads_at_fork_thread_started": start_methods.threads_at_fork(start_thread=True),
    # Django's connection pool.
    "pool": pools.pool,
    "pool_warmed_up": lambda vendor, engine: pools.pool(vendor, engine, warm_up_only=True),
    "pool_beside_plain_alias": pools.pool_beside_plain_alias,
    # Third-party pools (ENGINE one of tests.backends' with a pool).
    "third_party_pool": pools.third_party_pool(),
    "third_party_pool_child_exits": pools.third_party_pool(child_only_exits=True),
    "unknown_pool": pools.unknown_pool(),
    "unknown_pool_dropped_in_post_fork": pools.unknown_pool(drop_in_post_fork=True),
    "libc_fork_unknown_pool_dropped_in_post_fork": pools.unknown_pool(drop_in_post_fork=True, fork=libc_fork),
    # Django's state in a child, before any checkout (through libc: no at-fork handler).
    **{
        f"{prefix}{name}": make(fork)
        for prefix, fork in (("", os.fork), ("libc_fork_", libc_fork))
        for name, make in (
            ("held_cursor", state.held_cursor),
            ("held_server_side_cursor", state.held_server_side_cursor),
            ("ensure_connection_then_raw", state.ensure_connection_then_raw),
            ("close_pool", state.close_pool),
            ("atomic_in_child", state.atomic_in_child),
            ("sqlite_forked_in_transaction", sqlite.forked_in_transaction),
        )
    },
    # Around the at-fork moment.
    "hook_before_ours": robustness.hook_before_ours,
    "libc_fork_own_raw_connection_first": robustness.libc_fork_own_raw_connection_first,
    "signal_during_invalidation": robustness.signal_during_invalidation,
    "exit_signal_during_invalidation": robustness.exit_signal_during_invalidation,
    "connection_above_lowered_limit": robustness.connection_above_lowered_limit(os.fork),
    "libc_fork_connection_above_lowered_limit": robustness.connection_above_lowered_limit(libc_fork),
    "libc_fork_connection_above_lowered_limit_closed_first": robustness.connection_above_lowered_limit(
        libc_fork, closed_first=True
    ),
    "libc_fork_descriptor_reused_by_child": robustness.descriptor_reused_by_child,
    "forked_out_of_descriptors": robustness.forked_out_of_descriptors(os.fork),
    "libc_fork_forked_out_of_descriptors": robustness.forked_out_of_descriptors(libc_fork),
    "pool_close_returns": robustness.pool_close_returns,
    **{f"raw_connection_to_{where}": robustness.raw_connection_to(where) for where in ("hostname", "socket", "hosts")},
    # SQLite.
    "sqlite_file": sqlite.sqlite_file,
    "sqlite_memory": sqlite.sqlite_memory,
    # Between Django and the server.
    "gis": servers.gis,
    "through_pgbouncer": servers.through_pgbouncer,
    "tls_in_use": servers.tls_in_use,
}
