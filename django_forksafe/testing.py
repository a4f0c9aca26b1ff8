"""
The test-suite trap: a fork inside a test's transaction.

Django's ``TestCase`` (and pytest-django's ``db`` fixture, which uses it) runs
each test inside atomic blocks that it rolls back at the end. A child forked
there does not share that transaction: it gets a session of its own (see
how-it-works), which cannot see the test's rows, and whose writes are
committed for real. At the fork, in the parent, this module warns once per
test with ForkInTestTransactionWarning.

It runs from ``os.register_at_fork(before=...)``, the only hook Python gives
the parent, and so only for forks made through Python (``os.fork()``,
``multiprocessing``, Celery, ...): a fork behind Python's back (a C
extension, libc's ``fork()``) gives the parent no hook, and no warning.
Nothing here runs on the query path.
"""

from __future__ import annotations

import os
import sys
import warnings
import weakref
from typing import TYPE_CHECKING, Any

from django_forksafe.detection import PROCESS_MARK

if TYPE_CHECKING:
    import unittest

DOCS_URL = "https://django-forksafe.readthedocs.io/en/latest/testing.html"


class ForkInTestTransactionWarning(RuntimeWarning):
    """
    This process forks inside a test's transaction, which the child does not
    share (Django's ``TestCase``, pytest-django's ``db`` fixture).

    A RuntimeWarning: nothing is wrong with the code under test, but this run
    of it does not do what the test expects. Shown once per test. Made an
    error (``warnings.filterwarnings("error", category=...)`` in the test
    settings), it fails a unittest test (Django's runner) at its end; for
    pytest, see the testing page of the documentation. Python's own ``-W``
    option cannot name it (it is read before packages can be imported).
    """


# The innermost test-case atomic block of each connection, for each test
# already warned about: a test's blocks are new objects (TestCase makes them
# in _fixture_setup(), pytest-django for each test), so a later test warns again.
_warned: weakref.WeakSet[Any] = weakref.WeakSet()


def _test_case_block(connection: Any) -> Any:
    """The innermost atomic block that Django's test case opened on
    `connection` (Django marks them ``_from_testcase``), or None."""
    for block in reversed(connection.atomic_blocks):
        if getattr(block, "_from_testcase", False):
            return block
    return None


def _what_the_child_gets(connection: Any) -> str:
    if connection.vendor == "sqlite":
        is_in_memory_db = getattr(connection, "is_in_memory_db", None)
        if callable(is_in_memory_db) and is_in_memory_db():
            return (
                "works on a private copy of the in-memory database as it was at the fork: "
                "it sees the test's rows, but nothing it writes reaches this process"
            )
        return (
            "opens the file anew: it does not see the rows the test created, and its writes "
            "to that file are refused (this process holds a transaction on it)"
        )
    return (
        "works on a session of its own, in autocommit: it does not see the rows the test "
        "created (setUp, setUpTestData, factories), and what it writes is committed for "
        "real and outlives the test"
    )


def _running_testcase() -> unittest.TestCase | None:
    """The unittest TestCase running now, if one is on the stack (Django's runner)."""
    module = sys.modules.get("unittest")  # Not imported here: every process imports us.
    if module is None:
        return None
    testcase_class: type[unittest.TestCase] = module.TestCase
    frame = sys._getframe(1)
    while frame is not None:
        test = frame.f_locals.get("self")
        if isinstance(test, testcase_class):
            return test
        frame = frame.f_back  # type: ignore[assignment]
    return None


def _test_name(testcase: unittest.TestCase | None) -> str | None:
    if testcase is not None:
        return testcase.id()
    current = os.environ.get("PYTEST_CURRENT_TEST")  # pytest's "path::name (call)".
    return current.rpartition(" ")[0] if current else None


def _raise(error: BaseException) -> None:
    raise error


def message(inside: list[Any], test: str | None) -> str:
    """The warning's text, for the connections inside a test's transaction."""
    where = f" in test {test}" if test else ""
    children = "; ".join(
        f"on {connection.alias!r} the child {_what_the_child_gets(connection)}" for connection in inside
    )
    return (
        f"This process is forking inside a test's transaction{where} (Django's TestCase, "
        f"pytest-django's db fixture), which the child does not share: {children}. Use "
        "TransactionTestCase or @pytest.mark.django_db(transaction=True) for this test, "
        f"or run the task inline (Celery's task_always_eager, RQ's is_async=False). See {DOCS_URL}"
    )


def warn_if_forking_in_test_transaction() -> None:
    """The parent's at-fork hook: warn, once per test, if a fork-safe
    connection of this thread is inside an atomic block a test case opened."""
    # Without Django's test cases loaded there is no such block: one lookup.
    # A child that has not yet used the database holds its parent's blocks,
    # which it drops at first use.
    if "django.test.testcases" not in sys.modules or not PROCESS_MARK[0]:
        return
    from django.db import connections

    from django_forksafe.wrapper import ForkSafeMixin

    try:
        opened = connections.all(initialized_only=True)
    except Exception:  # Settings not configured: no test is running.
        return
    inside = []
    blocks = []
    for connection in opened:
        if not isinstance(connection, ForkSafeMixin) or not connection.in_atomic_block:
            continue
        block = _test_case_block(connection)
        if block is not None:
            inside.append(connection)
            blocks.append(block)
    if not inside or all(block in _warned for block in blocks):
        return
    _warned.update(blocks)
    try:
        caller = sys._getframe(1)  # What called os.fork(), where the warning points.
    except ValueError:  # Called from C alone.
        caller = sys._getframe(0)
    testcase = _running_testcase()
    try:
        # warn_explicit() without a registry: Python's "default" action would
        # otherwise show the same text at the same line once per run, not once per test.
        warnings.warn_explicit(
            message(inside, _test_name(testcase)),
            ForkInTestTransactionWarning,
            caller.f_code.co_filename,
            caller.f_lineno,
            module=caller.f_globals.get("__name__"),
        )
    except ForkInTestTransactionWarning as error:
        # A filter made it an error, which no at-fork hook can raise (Python
        # reports it and forks all the same): a unittest test fails with it
        # at its end instead; elsewhere, Python's report it is (pytest turns
        # it into a PytestUnraisableExceptionWarning).
        if testcase is None:
            raise
        testcase.addCleanup(_raise, error)


os.register_at_fork(before=warn_if_forking_in_test_transaction)
