"""
The post_fork receiver docs/adapters.rst shows for a pool no adapter knows
(tests.backends.unknown_pool's): connected on import, before the fork.
"""

from typing import Any

from django.dispatch import receiver

from django_forksafe.signals import post_fork
from django_forksafe.silencing import keep_forever
from tests.backends.unknown_pool import base


@receiver(post_fork)
def drop_inherited_pool(sender: None, parent_pid: int, aliases: list[str], **kwargs: Any) -> None:
    inherited = list(base.IDLE)
    keep_forever(inherited)  # First: never freed, so none of them says goodbye.
    base.IDLE.clear()  # Never close() them: they are the parent's sessions.
