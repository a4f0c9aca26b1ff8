"""Fork-safe Django database backends."""

from __future__ import annotations

from django_forksafe.testing import ForkInTestTransactionWarning
from django_forksafe.wrapper import ForkSafeMixin, forksafe

__all__ = ["ForkInTestTransactionWarning", "ForkSafeMixin", "forksafe"]
__version__ = "0.1.0"
