"""The Backend.AI v2 dialect's routes."""
from __future__ import annotations

from typing import Any

from ...replicas.forward import forwardable

from . import admin, base, folders, kernels, stream

KERNEL = r"(?P<kernel_id>[\w-]{1,64})"  # a Jupyter kernel id or a client session token
FOLDER = r"(?P<name>[\w.-]{1,64})"


def default_handlers(b: str) -> list[tuple[str, type[Any]]]:
    return [
        (rf"{b}v2/?", base.RootHandler),
        (rf"{b}v2/kernel/(?:create)?", kernels.KernelCreateHandler),
        (rf"{b}v2/kernel/{KERNEL}", kernels.KernelHandler),
        (rf"{b}v2/kernel/{KERNEL}/logs", kernels.KernelLogsHandler),
        (rf"{b}v2/kernel/{KERNEL}/(?P<action>interrupt|complete|upload)", kernels.KernelActionHandler),
        (rf"{b}v2/folders/?", folders.FoldersHandler),
        (rf"{b}v2/folders/{FOLDER}/?", folders.FolderHandler),
        (rf"{b}v2/folders/{FOLDER}/upload", folders.FolderUploadHandler),
        (rf"{b}v2/folders/{FOLDER}/files", folders.FolderFilesHandler),
        (rf"{b}v2/folders/{FOLDER}/download", folders.FolderDownloadHandler),
        (rf"{b}v2/admin/graphql", admin.GraphQLHandler),
        (rf"{b}v2/stream/kernel/{KERNEL}/pty", forwardable(stream.PtyHandler)),
    ]
