"""The Docker engine goes away and comes back (simulated by cutting a socket proxy in front of the
real engine, so no other container is touched): the gateway keeps answering, new starts get a
503 meanwhile, and after the engine is back it reconnects and reconciles: a kernel whose
container died while the engine was unreachable is reported dead; the others keep working."""
from __future__ import annotations

import asyncio
import contextlib
import threading

import docker

from tests.conftest import TOKEN, Client, require_docker, start_process_gateway, stop_process_gateway
from tests.wsclient import KernelWS

ENGINE_SOCKET = "/var/run/docker.sock"


class SocketProxy:
    """A unix-socket proxy to the engine that can be cut (all connections dropped) and restored.
    It runs its own loop in a thread: the test's loop blocks while a gateway process starts."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.server: asyncio.AbstractServer | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def start(self) -> None:
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    def cut(self) -> None:
        asyncio.run_coroutine_threadsafe(self._cut(), self.loop).result(10)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(ENGINE_SOCKET)
        self.writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _start(self) -> None:
        self.server = await asyncio.start_unix_server(self._handle, self.path)

    async def _cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()
        self.writers.clear()
        await self.server.wait_closed()


async def test_engine_away_and_back(tmp_path) -> None:
    require_docker()
    proxy = SocketProxy(str(tmp_path / "docker.sock"))
    proxy.start()
    # Autorestart off: the test proves the missed death is reported.
    gw = start_process_gateway(str(tmp_path), env={"KGE_DOCKER_URL": f"unix://{proxy.path}", "KGE_AUTORESTART": "0"})
    try:
        c = Client(gw.url)
        survivor = (await c.fetch("POST", "/api/kernels", {"name": "python3"})).json["id"]
        victim = (await c.fetch("POST", "/api/kernels", {"name": "python3"})).json["id"]
        proxy.cut()
        assert (await c.fetch("GET", "/api")).status == 200  # the gateway keeps answering
        r = await c.fetch("POST", "/api/kernels", {"name": "python3"})
        assert r.status == 503 and "Docker engine unavailable" in r.json["message"], r.body
        # While the gateway cannot see the engine, one container dies.
        (container,) = docker.from_env().containers.list(filters={"label": f"org.kge.kernel.id={victim}"})
        container.kill()
        await asyncio.sleep(1.0)
        proxy.start()
        for _ in range(200):  # the event stream reconnects (backoff) and every kernel's state is re-read
            if (await c.fetch("GET", f"/api/kernels/{victim}")).json["execution_state"] == "dead":
                break
            await asyncio.sleep(0.1)
        assert (await c.fetch("GET", f"/api/kernels/{victim}")).json["execution_state"] == "dead"
        ws = await KernelWS.connect(gw.url, survivor, TOKEN)
        assert ws.stdout(await ws.execute("print(1 + 1)")).strip() == "2"
        ws.close()
        r = await c.fetch("POST", "/api/kernels", {"name": "python3"})
        assert r.status == 201, r.body
    finally:
        assert stop_process_gateway(gw) == 0
        with contextlib.suppress(Exception):
            proxy.cut()
        proxy.loop.call_soon_threadsafe(proxy.loop.stop)
