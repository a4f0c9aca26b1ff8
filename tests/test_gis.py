"""The GIS ENGINEs (django_forksafe.backends.gis.*), on PostGIS, MariaDB's
spatial types and SpatiaLite."""

from __future__ import annotations

import sqlite3

import pytest

from tests import dbconfig
from tests.utils import assert_child_reconnected, assert_kept_session, assert_lost_session, run


@pytest.mark.parametrize("vendor", dbconfig.SERVER_VENDORS)
def test_gis_engine_forksafe(vendor: str) -> None:
    result = run("gis", vendor, "gis-forksafe")
    assert_kept_session(result)
    assert_child_reconnected(result)
    assert result["child_spatial"] == result["parent_spatial"] == "POINT(1 2)"


@pytest.mark.parametrize("vendor", dbconfig.SERVER_VENDORS)
def test_control_gis_engine(vendor: str) -> None:
    assert_lost_session(run("gis", vendor, "gis-plain"))


def needs_loadable_extensions() -> None:
    if not hasattr(sqlite3.Connection, "enable_load_extension"):
        # pyenv's CPython builds lack it; tox -e spatialite uses Debian's Python.
        pytest.skip("this Python's sqlite3 cannot load extensions (SpatiaLite); see tox -e spatialite")


def test_spatialite_handle_never_used_or_closed_in_child() -> None:
    needs_loadable_extensions()
    result = run("sqlite_file", "sqlite3", "gis-forksafe")
    assert result["inherited_handle_used"] is False
    assert result["inherited_handle_open"] is True
    assert result["child_spatial"] == "POINT(1 2)"
    assert result["parent_rows"] == [1, 2]


def test_control_spatialite() -> None:
    needs_loadable_extensions()
    assert run("sqlite_file", "sqlite3", "gis-plain")["inherited_handle_used"] is True
