"""
Knowing, with one memory load and no system call, whether this process is
the one whose connections the registry holds, whatever kind of fork made it.

``PROCESS_MARK[0]`` reads true in the process that armed it and false in any child,
forked through Python or behind its back (uWSGI, C extensions calling
``fork()``): the mark is a private anonymous page marked ``MADV_WIPEONFORK``
(Linux 4.14 and later), which the kernel hands to every child zero-filled.
Where the kernel refuses that, the mark compares ``os.getpid()`` instead, as
redis-py does on every checkout: a system call, but the same answer.

``NATIVE`` is the optional C extension (django_forksafe._native), or None
where it was not built or DJANGO_FORKSAFE_NATIVE=0 turns it off. With it,
every inherited database socket is silenced inside fork() itself, and the
mark is read in C.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    import mmap

# <linux/mman.h>; not exported by CPython's mmap module on every build.
_MADV_WIPEONFORK: Final = 18
WIPEONFORK: Final = "MADV_WIPEONFORK"
GETPID: Final = "getpid"

DESCRIPTION: Final = {
    WIPEONFORK: "one memory load per checkout, no system call",
    GETPID: "the kernel refused MADV_WIPEONFORK: one getpid() system call per checkout",
}

# For tests and benchmarks: force the fallback (DJANGO_FORKSAFE_DETECTION=getpid).
_FORCE_ENV = "DJANGO_FORKSAFE_DETECTION"
# For tests, benchmarks and the cautious: DJANGO_FORKSAFE_NATIVE=0 leaves the C extension out.
_NATIVE_ENV = "DJANGO_FORKSAFE_NATIVE"


def load_native() -> ModuleType | None:
    """The C extension, unless turned off or not built here."""
    if os.environ.get(_NATIVE_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        from django_forksafe import _native
    except ImportError:  # Not built: no compiler, not Linux, not CPython.
        return None
    return _native  # type: ignore[no-any-return,unused-ignore]


NATIVE: Final = load_native()
MECHANISM: Final = (
    "C extension: every inherited database socket silenced inside fork()"
    if NATIVE is not None
    else "pure Python: inherited connections silenced by the at-fork handler, or at the first checkout"
)


class ProcessMark(Protocol):
    def __getitem__(self, index: int, /) -> int: ...

    def __setitem__(self, index: int, value: int, /) -> None: ...


class PidMark:
    """The fallback mark: 1 in the process that last armed it, else 0."""

    __slots__ = ("_pid",)

    def __init__(self) -> None:
        self._pid = os.getpid()

    def __getitem__(self, index: int, /) -> int:
        return 1 if os.getpid() == self._pid else 0

    def __setitem__(self, index: int, value: int, /) -> None:
        self._pid = os.getpid() if value else -1


def wipe_on_fork_page() -> mmap.mmap | None:
    """An armed page the kernel zeroes in every child, or None if refused."""
    # Imported here: with the C extension, whose page this is, a process
    # does without the module (each mapping makes every fork() dearer).
    import mmap

    if not hasattr(mmap, "MAP_ANONYMOUS") or not hasattr(mmap.mmap, "madvise"):
        return None
    page = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        page.madvise(getattr(mmap, "MADV_WIPEONFORK", _MADV_WIPEONFORK))
    except OSError:  # EINVAL: a kernel before 4.14, or not Linux.
        page.close()
        return None
    page[0] = 1
    return page


def make_mark(method: str | None = None) -> tuple[ProcessMark, str]:
    """The best mark this kernel offers (or `method`, if named), armed."""
    if method != GETPID and NATIVE is not None and NATIVE.MARK_WIPES_ON_FORK:
        return NATIVE.PROCESS_MARK, WIPEONFORK
    if method != GETPID:
        page = wipe_on_fork_page()
        if page is not None:
            return page, WIPEONFORK
    return PidMark(), GETPID


PROCESS_MARK: ProcessMark
METHOD: str
PROCESS_MARK, METHOD = make_mark(os.environ.get(_FORCE_ENV) or None)
