"""
The atomic blocks a child inherits: still on its stack, but its parent's.

A child never shares its parent's transaction: its wrapper is reset to
outside any block (see ForkSafeMixin._forksafe_forget_connection). Leaving an
inherited block then goes through Django's own outermost-block path: with no
connection open it sends nothing and opens nothing; with the child's own
connection open, it only restores autocommit, which is already on.

A child forked behind Python's back may leave an inherited block before any
checkout: Atomic.__exit__ pops connection.atomic_blocks before anything
else, and on a fork-safe wrapper that pop notices the fork.
"""

from __future__ import annotations

from typing import Any, SupportsIndex

from django_forksafe import registry
from django_forksafe.detection import PROCESS_MARK


class AtomicBlocks(list[Any]):
    """A fork-safe wrapper's atomic_blocks, whose pop() notices a fork."""

    __slots__ = ()

    def pop(self, index: SupportsIndex = -1) -> Any:
        if not PROCESS_MARK[0]:
            registry.invalidate_if_forked()
        return super().pop(index)
