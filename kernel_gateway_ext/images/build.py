"""`kernel-gateway-ext build-images`: build the kernel images, with or without a registry.

Without a registry (the default) the base is made locally by docker/base/make-base.sh
(debootstrap + docker import). With `--base=debian:bookworm-slim` (or any Debian-like image a
registry serves) the Dockerfile installs the packages itself. A build is skipped when an image
with the same build-context hash exists, so CI can call this every run.

The build contexts ship with the package (kernel_gateway_ext.resources) and are sent to the engine
as a tar made here, so an installed wheel builds exactly what a source checkout does. Any kernelspec
folder with a Dockerfile (ours, or an operator's in extra_kernelspec_dirs) is built too, FROM the
kernel image, and tagged with the image its kernel.json names.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from traitlets import Bool, Dict, List, Unicode

from ..application import GatewayApplication, common_aliases, common_flags
from ..config import env
from ..kernels.specs import GatewayKernelSpecManager
from ..resources import resource, resource_path, walk

BASE_LOCAL = "kge-base:bookworm"
KERNEL_IMAGE = "kge-kernel:latest"
NOTEBOOK_IMAGE = "kge-notebook:latest"
BASH_KERNEL_WHEEL = "bash_kernel==0.10.0"
CONTEXT_LABEL = "org.kge.context-hash"
EXECUTABLE = {"kge-nanny", "make-base.sh"}  # files the images run: 0755 in the tar, 0644 the rest

DESCRIPTION = """Build the images kernels and sessions run in, without a container registry.

kge-base:bookworm is made with debootstrap from this machine's Debian mirror (or --base names a
Debian-like image a registry serves); kge-kernel (Python and bash kernels), kge-notebook (Skaha notebook
sessions) and the image of every kernelspec folder that holds a Dockerfile (python3-datascience, and an
operator's own in extra_kernelspec_dirs / KGE_KERNELSPEC_DIRS) are built on it. An image whose build
context is unchanged is kept, so this is cheap to run at every start. It reads the gateway's config file
and KGE_* env vars."""


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


def wheel_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kernel_gateway_ext" / "wheels"


class BuildImagesApp(GatewayApplication):
    """Build the kernel images (no registry needed)."""

    name = "kernel-gateway-ext build-images"
    description = DESCRIPTION
    examples = """kernel-gateway-ext build-images
kernel-gateway-ext build-images --force
kernel-gateway-ext build-images --base=debian:bookworm-slim
KGE_KERNELSPEC_DIRS='["/etc/kge/kernels"]' kernel-gateway-ext build-images   # and an operator's images"""
    base = env(
        Unicode("", help=f"Base image. Empty: {BASE_LOCAL}, made locally with debootstrap (no registry)."),
        "KGE_IMAGE_BASE",
    )
    tag = env(Unicode(KERNEL_IMAGE, help="Tag of the kernel image."), "KGE_KERNEL_IMAGE")
    force = Bool(False, help="Rebuild even when an up-to-date image exists.").tag(config=True)
    aliases = Dict({**common_aliases, "base": "BuildImagesApp.base", "tag": "BuildImagesApp.tag",
                    "kernelspec-dirs": "GatewayKernelSpecManager.extra_kernelspec_dirs"})
    flags = Dict({**common_flags, "force": ({"BuildImagesApp": {"force": True}}, "Rebuild everything.")})
    classes = List([GatewayKernelSpecManager])  # type: ignore[assignment]

    def start(self) -> None:
        if self.generate_config:
            self.write_default_config()
            return
        import docker

        client = docker.from_env(timeout=600)
        root = resource("docker")
        base = self.base or BASE_LOCAL
        if not self.base:
            self.ensure_local_base(client)
        wheels = self.ensure_wheels()
        self.build(client, root / "kernel", self.tag, base, extra_files=[(f"wheels/{w.name}", w) for w in wheels])
        kernel_id = str(client.images.get(self.tag).id)
        # Images built on the kernel image are rebuilt whenever it changes.
        self.build(client, root / "notebook", NOTEBOOK_IMAGE, self.tag, extra=kernel_id)
        for name, folder, image in self.kernelspec_images():
            print(f"build-images: kernelspec {name} has a Dockerfile: building {image}", flush=True)
            self.build(client, folder, image, self.tag, extra=kernel_id)

    def kernelspec_images(self) -> list[tuple[str, Path, str]]:
        """(kernelspec, folder, image) of every kernelspec folder holding a Dockerfile."""
        ksm = GatewayKernelSpecManager(parent=self, log=self.log)
        out = []
        for name, folder in sorted(ksm.find_kernel_specs().items()):
            path = Path(folder)
            if not (path / "Dockerfile").is_file():
                continue
            meta = json.loads((path / "kernel.json").read_text()).get("metadata") or {}
            image = ((meta.get("kernel_provisioner") or {}).get("config") or {}).get("image")
            if not image:
                raise SystemExit(f"build-images: kernelspec {name} has a Dockerfile but its kernel.json names no "
                                 "image (metadata.kernel_provisioner.config.image)")
            out.append((name, path, image))
        return out

    def exists(self, client: Any, tag: str) -> Any:
        import docker.errors

        try:
            return client.images.get(tag)
        except docker.errors.ImageNotFound:
            return None

    def ensure_local_base(self, client: Any) -> None:
        image = self.exists(client, BASE_LOCAL)
        if image is not None and not self.force:
            print(f"build-images: {BASE_LOCAL} exists, kept (--force rebuilds)", flush=True)
            return
        print(f"build-images: making {BASE_LOCAL} with debootstrap (1-2 minutes)", flush=True)
        script = resource_path("docker") / "base" / "make-base.sh"
        subprocess.run(["bash", str(script), BASE_LOCAL], check=True)

    def ensure_wheels(self) -> list[Path]:
        """bash_kernel's wheel (Debian has no package): downloaded once into the user's cache."""
        cache = wheel_cache()
        found = sorted(cache.glob("bash_kernel-*.whl"))
        if found:
            return found
        cache.mkdir(parents=True, exist_ok=True)
        print(f"build-images: downloading {BASH_KERNEL_WHEEL}", flush=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:  # whole or not at all
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", BASH_KERNEL_WHEEL, "-d", tmp],
                           check=True)
            for w in Path(tmp).glob("*.whl"):
                w.rename(cache / w.name)
        return sorted(cache.glob("bash_kernel-*.whl"))

    def build(self, client: Any, context: Traversable | Path, tag: str, base: str, extra: str = "",
              extra_files: list[tuple[str, Path]] | None = None) -> None:
        files = read_context(context, extra_files or [])
        digest = context_hash(files, base + extra)
        image = self.exists(client, tag)
        if image is not None and not self.force and image.labels.get(CONTEXT_LABEL) == digest:
            print(f"build-images: {tag} is up to date", flush=True)
            return
        print(f"build-images: building {tag} from {base}", flush=True)
        stream = client.api.build(
            fileobj=tar_context(files), custom_context=True, tag=tag, buildargs={"BASE": base},
            labels={CONTEXT_LABEL: digest}, rm=True, forcerm=True, decode=True,
        )
        for chunk in stream:
            if "stream" in chunk:
                sys.stdout.write(chunk["stream"])
                sys.stdout.flush()
            elif "error" in chunk:
                raise SystemExit(f"build-images: {tag} failed: {chunk['error']}")
        print(f"build-images: built {tag}", flush=True)
