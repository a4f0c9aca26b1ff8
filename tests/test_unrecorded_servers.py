"""
Connections whose server was not in the endpoint table at the fork (a host
name in the settings, recorded only from a connection's peer): each is
silenced in the child all the same, and recording a peer does not fail for
want of a descriptor. With the C extension and without it; Django's plain
ENGINE is the control.
"""

from __future__ import annotations

import pytest

from tests.utils import MECHANISMS, SERVERS, run, run_with

FORKS = pytest.mark.parametrize("fork", ["", "libc_fork_"])


@MECHANISMS
@FORKS
@SERVERS
def test_fork_between_track_and_peer_leaves_no_live_copy(fork: str, vendor: str, native: str) -> None:
    result = run_with(f"{fork}fork_between_track_and_peer", vendor, native=native)
    assert result["child_session"] != result["parent_session"]
    assert result["inherited_connected"] is False
    # The parent's session ends when the parent lets go, not when the child does.
    assert result["session_ended_with_parents_connection"] is True


@FORKS
@SERVERS
def test_control_fork_between_track_and_peer_child_keeps_parents_session(fork: str, vendor: str) -> None:
    result = run(f"{fork}fork_between_track_and_peer", vendor, "plain")
    assert result["inherited_connected"] is True
    assert result["session_ended_with_parents_connection"] is False


@MECHANISMS
@FORKS
@SERVERS
def test_connection_taking_last_descriptor_records_its_server(fork: str, vendor: str, native: str) -> None:
    result = run_with(f"{fork}connection_takes_last_descriptor", vendor, native=native)
    assert result["descriptors_were_exhausted"]
    assert result["raw_error"] is None and result["raw_same_session"]
    assert result["raw_session_on_server"]
    assert result["parent_same_session"]


@FORKS
@SERVERS
def test_control_connection_taking_last_descriptor_raw_session_ended_by_child(fork: str, vendor: str) -> None:
    result = run(f"{fork}connection_takes_last_descriptor", vendor, "plain")
    assert result["raw_error"] is not None
    assert not result["raw_session_on_server"]
