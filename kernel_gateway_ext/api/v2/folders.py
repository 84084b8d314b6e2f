"""/v2/folders/…: virtual folders of the calling key's owner."""
from __future__ import annotations

import asyncio
import os
import uuid
import zlib

from tornado import web

from ...errors import BadRequest
from ..base import StreamedBody
from .base import V2Handler


class FoldersHandler(V2Handler):
    async def get(self) -> None:
        self.write_json(await self.gateway.folders.list(self.identity.user))

    async def post(self) -> None:
        name = self.body_object().get("name")
        if not isinstance(name, str):
            raise BadRequest("'name' is required")
        self.write_json(await self.gateway.folders.create(self.identity.user, name), status=201)


class FolderHandler(V2Handler):
    async def get(self, name: str) -> None:
        self.write_json(await self.gateway.folders.info(self.owner_scope(), name))

    async def delete(self, name: str) -> None:
        await self.gateway.folders.delete(self.owner_scope(), name)
        self.no_content()


@web.stream_request_body
class FolderUploadHandler(StreamedBody, V2Handler):
    async def post(self, name: str) -> None:
        await self.take_body()
        files = self.request.files.get("src") or []
        if not files:
            raise BadRequest("no files: send multipart field 'src'")
        count = await self.gateway.folders.upload(self.owner_scope(), name, [(f.filename, f.body) for f in files])
        self.write_json({"uploaded": count}, status=201)


class FolderFilesHandler(V2Handler):
    async def get(self, name: str) -> None:
        path = self.get_query_argument("path", ".")
        body = self.json_body() if self.request.body else {}
        path = body.get("path", path) if isinstance(body, dict) else path
        files = await self.gateway.folders.files(self.owner_scope(), name, str(path))
        self.write_json({"files": files, "folder_path": str(path)})


MAX_DOWNLOAD_FILES = 100
CHUNK = 1 << 20


class FolderDownloadHandler(V2Handler):
    """GET /v2/folders/NAME/download {"files": [...]}: what backend.ai-client 1.4's `vfolder
    download` reads, as Backend.AI's manager sends it: multipart/mixed, one gzip-encoded part per
    file named by its path, and X-TOTAL-PAYLOADS-LENGTH (the files' sizes) for its progress bar.
    Streamed a chunk at a time, each written out before the next is read."""

    async def get(self, name: str) -> None:
        single = self.get_query_argument("file", None)
        if single is not None:  # a browser's download (a GET has no body there): the one file, as it is
            await self.send_file(name, single)
            return
        files = self.body_object().get("files")
        if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
            raise BadRequest("'files' must be a non-empty list of paths")
        if len(files) > MAX_DOWNLOAD_FILES:
            raise BadRequest(f"at most {MAX_DOWNLOAD_FILES} files per download")
        opened = await self.gateway.folders.open_files(self.owner_scope(), name, files)
        try:
            boundary = uuid.uuid4().hex
            self.set_header("Content-Type", f"multipart/mixed; boundary={boundary}")
            self.set_header("X-TOTAL-PAYLOADS-LENGTH", str(sum(size for _, _, size in opened)))
            for rel, fd, _ in opened:
                quoted = rel.replace("\\", "\\\\").replace('"', '\\"')
                self.write(f"--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Encoding: gzip\r\n"
                           f'Content-Disposition: attachment; filename="{quoted}"\r\n\r\n'.encode())
                gzip = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
                while chunk := await asyncio.to_thread(os.read, fd, CHUNK):
                    self.write(gzip.compress(chunk))
                    await self.flush()  # back-pressure: the next chunk waits for the client
                self.write(gzip.flush() + b"\r\n")
            self.write(f"--{boundary}--\r\n".encode())
            self.finish()
        finally:
            for _, fd, _ in opened:
                os.close(fd)

    async def send_file(self, name: str, path: str) -> None:
        [(rel, fd, size)] = await self.gateway.folders.open_files(self.owner_scope(), name, [path])
        try:
            filename = os.path.basename(rel).replace("\\", "_").replace('"', "_") or "download"
            self.set_header("Content-Type", "application/octet-stream")
            self.set_header("Content-Disposition", f'attachment; filename="{filename}"')
            self.set_header("Content-Length", str(size))
            while chunk := await asyncio.to_thread(os.read, fd, CHUNK):
                self.write(chunk)
                await self.flush()
            self.finish()
        finally:
            os.close(fd)
