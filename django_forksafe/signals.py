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


# Sent exactly once in each child process (forked through Python, or
# detected later by process ID), after the connections it inherited have been
# invalidated and before any of them is reopened, also when there were none.
# Arguments: sender=None, parent_pid (int): the process it forked from,
# aliases (list[str]): the aliases whose inherited connections were
# invalidated. Use it to reset per-process resources (cache clients, thread
# pools). Receivers run inside the fork handler: keep them short. A receiver's
# exception is logged on the "django_forksafe" logger and does not stop the
# others.
post_fork = _PostForkSignal()
