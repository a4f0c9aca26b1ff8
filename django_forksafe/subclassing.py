"""Fork-safe subclasses made from a mixin, for forksafe() and forksafe_cache()."""

from __future__ import annotations

from typing import Any, TypeVar

Class = TypeVar("Class", bound=type)


def fork_safe_subclass(klass: Class, mixin: type, module: str) -> Class:
    """A subclass of `klass` with `mixin` first, named as `klass` and
    defined in `module` (the caller's); `klass` itself if it has the mixin."""
    if issubclass(klass, mixin):
        return klass
    namespace = {
        "__module__": module,
        "__qualname__": klass.__qualname__,
        "__doc__": f"Fork-safe {klass.__module__}.{klass.__qualname__}.",
    }
    return type(klass.__name__, (mixin, klass), namespace)  # type: ignore[return-value]


def defined_after(klass: type, mixin: type, name: str) -> Any:
    """`name` as the first class after `mixin` in klass's MRO defines it
    (not bound): what super() in the mixin finds."""
    mro = klass.__mro__
    for base in mro[mro.index(mixin) + 1 :]:
        if name in vars(base):
            return vars(base)[name]
    raise AttributeError(name)
