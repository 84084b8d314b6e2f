"""The Jupyter dialect's routes (jupyter_server's default_handlers pattern)."""
from __future__ import annotations

from typing import Any

from ...replicas.forward import forwardable

from . import channels, handlers as jh, sessions as js


def default_handlers(b: str) -> list[tuple[str, type[Any]]]:
    """`b`: the base URL, ending in /."""
    return [
        (rf"{b}api/?", jh.ApiHandler),
        (rf"{b}api/kernelspecs/?", jh.KernelSpecsHandler),
        (rf"{b}api/kernelspecs/{jh.KERNEL_NAME}/?", jh.KernelSpecHandler),
        (rf"{b}kernelspecs/{jh.KERNEL_NAME}/(?P<path>.+)", jh.KernelSpecResourceHandler),
        (rf"{b}api/kernels/?", jh.KernelsHandler),
        (rf"{b}api/kernels/{jh.KERNEL_ID}/?", jh.KernelHandler),
        (rf"{b}api/kernels/{jh.KERNEL_ID}/(?P<action>restart|interrupt)/?", jh.KernelActionHandler),
        (rf"{b}api/kernels/{jh.KERNEL_ID}/channels/?", forwardable(channels.ChannelsHandler)),
        (rf"{b}api/sessions/?", js.SessionsHandler),
        (rf"{b}api/sessions/{js.SESSION_ID}/?", js.SessionHandler),
    ]
