"""/v2/folders/…: virtual folders of the calling key's owner."""
from __future__ import annotations

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
        self.write_json(await self.gateway.folders.info(self.identity.owner_filter(), name))

    async def delete(self, name: str) -> None:
        await self.gateway.folders.delete(self.identity.owner_filter(), name)
        self.no_content()


@web.stream_request_body
class FolderUploadHandler(StreamedBody, V2Handler):
    async def post(self, name: str) -> None:
        await self.take_body()
        files = self.request.files.get("src") or []
        if not files:
            raise BadRequest("no files: send multipart field 'src'")
        count = await self.gateway.folders.upload(self.identity.owner_filter(), name, [(f.filename, f.body) for f in files])
        self.write_json({"uploaded": count}, status=201)


class FolderFilesHandler(V2Handler):
    async def get(self, name: str) -> None:
        path = self.get_query_argument("path", ".")
        body = self.json_body() if self.request.body else {}
        path = body.get("path", path) if isinstance(body, dict) else path
        files = await self.gateway.folders.files(self.identity.owner_filter(), name, str(path))
        self.write_json({"files": files, "folder_path": str(path)})
