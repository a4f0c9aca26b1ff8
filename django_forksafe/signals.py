from __future__ import annotations

from typing import Any

from django.dispatch import Signal

from django_forksafe.detection import NATIVE


class _PostForkSignal(Signal):
    """A Signal that, once it has a receiver, has the C extension's fork hook
    call Python in every child at the fork (see registry)."""

    def connect(self, *args: Any, **kwargs: Any) -> None:
        super().connect(*args, **kwargs)
        if NATIVE is not None:
            NATIVE.want_python_at_fork()


#: Sent at most once in each child process, after the connections it
#: inherited have been invalidated and before any of them is reopened, also
#: when there were none. A child forked through Python hears it inside the
#: fork handler if receivers were connected before the fork (at import time,
#: or in ``AppConfig.ready()``); else, and after a fork behind Python's back
#: (uWSGI without ``--py-call-osafterfork``, a C extension, libc's
#: ``fork()``), at the child's first use of a database connection or
#: fork-safe cache. Forks are told apart by the process mark (a page the
#: kernel zeroes in every child, or ``os.getpid()`` compared where the kernel
#: refuses it: see :doc:`how-it-works`), not by process IDs recorded with
#: connections. Never sent at exit: a child not told at the fork (forked
#: behind Python's back, or before any receiver was connected) that never
#: uses the database is never told.
#:
#: Arguments: ``sender`` (``None``), ``parent_pid`` (``int``, the process it
#: forked from; without the C extension, after a fork behind Python's back by
#: a process that had not used the database itself, an earlier ancestor) and
#: ``aliases`` (``list[str]``, the aliases whose inherited connections were
#: invalidated). Use it to reset per-process resources
#: (cache clients, thread pools, a pool no adapter knows). Receivers may run
#: inside the fork handler: keep them short. A receiver's exception is logged
#: on the ``django_forksafe`` logger and does not stop the others.
post_fork = _PostForkSignal()
