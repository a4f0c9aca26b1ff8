from __future__ import annotations

from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest
from django.http.response import HttpResponseBase

from django_forksafe import registry

GetResponse = Callable[[HttpRequest], HttpResponseBase | Awaitable[HttpResponseBase]]


class ForkSafeMiddleware:
    """
    Invalidate, silently, connections inherited from another process at the
    start of each request: for servers that fork behind Python's back. Put it
    first in MIDDLEWARE. The check is one memory load per request (see detection).
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(self.get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self.async_mode:
            return self.__acall__(request)
        registry.invalidate_if_forked()
        return self.get_response(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        registry.invalidate_if_forked()
        return await self.get_response(request)  # type: ignore[no-any-return,misc]
