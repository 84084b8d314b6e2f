"""Images built on the engine from build contexts the package ships (the container layer's part of
`build-images`; the command itself is kernel_gateway_ext/build_images.py).

A context is sent as a tar made here from the package's resources, so an installed wheel builds
exactly what a source checkout does; an image whose context hash is unchanged is kept.
"""
from __future__ import annotations

import hashlib
import io
import sys
import tarfile
from collections.abc import Callable
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import docker
import docker.errors

from ..resources import walk

BASE_LOCAL = "kge-base:bookworm"
KERNEL_IMAGE = "kge-kernel:latest"
NOTEBOOK_IMAGE = "kge-notebook:latest"
CONTEXT_LABEL = "org.kge.context-hash"
EXECUTABLE = {"kge-nanny", "make-base.sh"}  # files the images run: 0755 in the tar, 0644 the rest


def context_hash(files: list[tuple[str, bytes]], extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for rel, data in files:
        h.update(rel.encode())
        h.update(data)
    return h.hexdigest()[:16]


def read_context(root: Traversable | Path, extra_files: list[tuple[str, Path]] | None = None) -> list[tuple[str, bytes]]:
    """(relative path, bytes) of every file of a build context, extra files added (or replacing)."""
    files = {rel: f.read_bytes() for rel, f in walk(root)}
    files.update({rel: p.read_bytes() for rel, p in extra_files or []})
    return sorted(files.items())


def tar_context(files: list[tuple[str, bytes]]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for rel, data in files:
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            info.mode = 0o755 if Path(rel).name in EXECUTABLE else 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


class ImageBuilder:
    """Builds and finds images on the local engine (a command-line tool: it may block)."""

    def __init__(self, force: bool = False) -> None:
        self.client = docker.from_env(timeout=600)
        self.force = force
        self.replaced: list[tuple[str, str]] = []  # (tag, old image id) a build took the tag from

    def image_id(self, tag: str) -> str | None:
        try:
            return str(self.client.images.get(tag).id)
        except docker.errors.ImageNotFound:
            return None

    def python_version(self, tag: str, fallback: tuple[Traversable | Path, str] | None = None) -> str:
        """The Python version of image `tag` (wheels installed into an image must fit it). A base
        without Python (a registry's slim image) is asked after building `fallback`'s stage
        (context, target): the stage of the Dockerfile that installs the packages."""
        argv = ["python3", "-c", "import platform; print(platform.python_version())"]
        try:
            out = self.client.containers.run(tag, argv, remove=True, network_disabled=True)
        except (docker.errors.ContainerError, docker.errors.APIError):
            if fallback is None:
                raise
            context, target = fallback
            stage = f"kge-{target}-stage:python"
            self.run_build(read_context(context), stage, tag, labels={}, target=target)
            try:
                out = self.client.containers.run(stage, argv, remove=True, network_disabled=True)
            finally:  # asked once; its layers stay cached for the real build
                self.client.images.remove(stage, noprune=True)
        return bytes(out).decode().strip()

    def build(self, context: Traversable | Path, tag: str, base: str, extra: str = "",
              extra_files: list[tuple[str, Path]] | None = None,
              fetch_files: Callable[[], list[tuple[str, Path]]] | None = None) -> None:
        """Build `tag` unless an image of the same context exists. `fetch_files` are added only
        when a build is due: files `extra` already names (pinned downloads), never fetched for
        an up-to-date image."""
        files = read_context(context, extra_files or [])
        digest = context_hash(files, base + extra)
        try:
            image: Any = self.client.images.get(tag)
        except docker.errors.ImageNotFound:
            image = None
        if image is not None and not self.force and image.labels.get(CONTEXT_LABEL) == digest:
            print(f"build-images: {tag} is up to date", flush=True)
            return
        if fetch_files is not None:
            files = read_context(context, [*(extra_files or []), *fetch_files()])
        print(f"build-images: building {tag} from {base}", flush=True)
        self.run_build(files, tag, base, labels={CONTEXT_LABEL: digest})
        print(f"build-images: built {tag}", flush=True)
        if image is not None and image.id != self.image_id(tag):
            self.replaced.append((tag, str(image.id)))

    def remove_replaced(self) -> None:
        """Remove the images the builds took their tags from, newest first (an image built on
        another goes before it), unless a container still uses one (a running kernel keeps its
        image until it restarts): each rebuild would otherwise leave hundreds of MB untagged."""
        for tag, old in reversed(self.replaced):
            try:
                self.client.images.remove(old, noprune=False)
                print(f"build-images: removed the {tag} it replaced ({old[7:19]})", flush=True)
            except docker.errors.ImageNotFound:
                pass
            except docker.errors.APIError as e:  # 409: a container (or another image) still uses it
                print(f"build-images: kept the {tag} it replaced ({old[7:19]}): {e.explanation}", flush=True)
        self.replaced.clear()

    def run_build(self, files: list[tuple[str, bytes]], tag: str, base: str, labels: dict[str, str],
                  target: str | None = None) -> None:
        stream = self.client.api.build(
            fileobj=tar_context(files), custom_context=True, tag=tag, buildargs={"BASE": base},
            labels=labels, rm=True, forcerm=True, decode=True, target=target,
        )
        for chunk in stream:
            if "stream" in chunk:
                sys.stdout.write(chunk["stream"])
                sys.stdout.flush()
            elif "error" in chunk:
                raise SystemExit(f"build-images: {tag} failed: {chunk['error']}")
