"""`kernel-gateway-ext build-images`: build the kernel images, with or without a registry.

Without a registry (the default) the base is made locally by docker/base/make-base.sh
(debootstrap + docker import). With `--base=debian:bookworm-slim` (or any Debian-like image a
registry serves) the Dockerfile installs the packages itself. A build is skipped when an image
with the same build-context hash exists, so CI can call this every run.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

from traitlets import Bool, Dict, Unicode
from traitlets.config import Application

from ..config import apply_env, env

BASE_LOCAL = "kge-base:bookworm"
KERNEL_IMAGE = "kge-kernel:latest"
NOTEBOOK_IMAGE = "kge-notebook:latest"
BASH_KERNEL_WHEEL = "bash_kernel==0.10.0"
CONTEXT_LABEL = "org.kge.context-hash"


def docker_dir() -> Path:
    here = Path(__file__).resolve().parents[2] / "docker"
    if not here.is_dir():
        raise SystemExit(f"build-images: no docker/ folder at {here}: run it from a source checkout")
    return here


def context_hash(path: Path, extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


class BuildImagesApp(Application):
    """Build the kernel images the kernelspecs name."""

    name = "kernel-gateway-ext build-images"
    base = env(
        Unicode("", help=f"Base image. Empty: {BASE_LOCAL}, made locally with debootstrap (no registry)."),
        "KGE_IMAGE_BASE",
    )
    tag = env(Unicode(KERNEL_IMAGE, help="Tag of the kernel image."), "KGE_KERNEL_IMAGE")
    force = Bool(False, help="Rebuild even when an up-to-date image exists.").tag(config=True)
    aliases = Dict({"base": "BuildImagesApp.base", "tag": "BuildImagesApp.tag"})
    flags = Dict({"force": ({"BuildImagesApp": {"force": True}}, "Rebuild everything.")})

    def start(self) -> None:
        apply_env(self)
        import docker

        client = docker.from_env(timeout=600)
        root = docker_dir()
        base = self.base or BASE_LOCAL
        if not self.base:
            self.ensure_local_base(client, root)
        self.ensure_wheels(root / "kernel" / "wheels")
        self.build(client, root / "kernel", self.tag, base)
        # The notebook-session image is built on the kernel image: rebuilt whenever that changes.
        self.build(client, root / "notebook", NOTEBOOK_IMAGE, self.tag,
                   extra=client.images.get(self.tag).id)

    def exists(self, client: Any, tag: str) -> Any:
        import docker.errors

        try:
            return client.images.get(tag)
        except docker.errors.ImageNotFound:
            return None

    def ensure_local_base(self, client: Any, root: Path) -> None:
        script = root / "base" / "make-base.sh"
        image = self.exists(client, BASE_LOCAL)
        if image is not None and not self.force:
            print(f"build-images: {BASE_LOCAL} exists, kept (--force rebuilds)", flush=True)
            return
        print(f"build-images: making {BASE_LOCAL} with debootstrap (1-2 minutes)", flush=True)
        subprocess.run(["bash", str(script), BASE_LOCAL], check=True)

    def ensure_wheels(self, wheels: Path) -> None:
        if list(wheels.glob("bash_kernel-*.whl")):
            return
        wheels.mkdir(parents=True, exist_ok=True)
        print(f"build-images: downloading {BASH_KERNEL_WHEEL}", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", BASH_KERNEL_WHEEL, "-d", str(wheels)],
            check=True,
        )

    def build(self, client: Any, context: Path, tag: str, base: str, extra: str = "") -> None:
        digest = context_hash(context, base + extra)
        image = self.exists(client, tag)
        if image is not None and not self.force and image.labels.get(CONTEXT_LABEL) == digest:
            print(f"build-images: {tag} is up to date", flush=True)
            return
        print(f"build-images: building {tag} from {base}", flush=True)
        stream = client.api.build(
            path=str(context), tag=tag, buildargs={"BASE": base}, labels={CONTEXT_LABEL: digest},
            rm=True, forcerm=True, decode=True,
        )
        for chunk in stream:
            if "stream" in chunk:
                sys.stdout.write(chunk["stream"])
                sys.stdout.flush()
            elif "error" in chunk:
                raise SystemExit(f"build-images: {tag} failed: {chunk['error']}")
        print(f"build-images: built {tag}", flush=True)
