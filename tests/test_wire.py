"""
Proof at the byte level: while a quiescent parent's children, forked every
way, use, close and drop every session they inherited (Django's, a cursor
held open, a driver connection Django never saw, Django's pool) and exit,
not one byte travels on the parent's connections. tcpdump watches them on
the loopback; the plain ENGINE's children put bytes there.
"""

from __future__ import annotations

import pytest

from tests import dbconfig
from tests.utils import require_native, require_server
from tests.wire import children_on_the_wire


def server(vendor: str) -> str:
    require_server(vendor)
    return vendor


@pytest.mark.usefixtures("tcpdump")
@pytest.mark.parametrize("vendor", dbconfig.SERVER_VENDORS)
def test_not_a_byte_on_the_parents_connections(vendor: str) -> None:
    """With the C extension, whatever made the fork."""
    require_native()
    seen = children_on_the_wire(server(vendor), "forksafe")
    assert seen["packets"] == []
    assert seen["after"] == seen["before"]


@pytest.mark.usefixtures("tcpdump")
@pytest.mark.parametrize("vendor", dbconfig.SERVER_VENDORS)
def test_not_a_byte_pure_python_through_python_forks(vendor: str) -> None:
    """Without it, through the forks that run Python's at-fork handlers (a
    libc fork's child is safe from its first checkout on: see README)."""
    seen = children_on_the_wire(server(vendor), "forksafe", "os.fork,multiprocessing", DJANGO_FORKSAFE_NATIVE="0")
    assert seen["packets"] == []
    assert seen["after"] == seen["before"]


@pytest.mark.usefixtures("tcpdump")
@pytest.mark.parametrize("vendor", dbconfig.SERVER_VENDORS)
def test_control_children_talk_on_the_parents_connections(vendor: str) -> None:
    seen = children_on_the_wire(server(vendor), "plain")
    assert seen["packets"]
    assert seen["after"] != seen["before"]
