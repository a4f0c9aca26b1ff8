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
    start of each request. The check is one memory load (see detection).

    Optional: wherever Django's handlers serve the request, their
    request_started signal runs the same check (wrapper.py), and every use of
    a connection checks too. Kept as the public API the project started with,
    for settings that list it, and for code that calls the middleware chain
    without Django's handlers (and so without request_started).
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
