"""`kernel-gateway-ext build-images`: build the kernel images, with or without a registry.

Without a registry (the default) the base is made locally by docker/base/make-base.sh
(debootstrap + docker import). With `--base=debian:bookworm-slim` (or any Debian-like image a
registry serves) the Dockerfile installs the packages itself. A build is skipped when an image
with the same build-context hash exists, so CI can call this every run.

The build contexts ship with the package (kernel_gateway_ext.resources); the container layer
(containers/images.py) sends them to the engine, so an installed wheel builds what a checkout does. Any kernelspec
folder with a Dockerfile (ours, or an operator's in extra_kernelspec_dirs) is built too, FROM the
kernel image, and tagged with the image its kernel.json names.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from traitlets import Bool, Dict, List, Unicode

from .application import GatewayApplication, common_aliases, common_flags
from .config import env
from .containers.images import BASE_LOCAL, KERNEL_IMAGE, NOTEBOOK_IMAGE, ImageBuilder
from .kernels.specs import GatewayKernelSpecManager
from .resources import resource, resource_path

# The kernels' own stack, the same releases a local Jupyter install gets from PyPI (Debian's
# IPython 8.5 / ipykernel 6.17 import 40 MiB and take twice as long to start), and bash_kernel,
# which Debian does not package: wheels for the kernel image's Python, in a venv of their own.
# matplotlib-inline 0.2 needs matplotlib 3.9; 0.1.7 also works with the Debian matplotlib (3.6) that a
# kernelspec image such as python3-datascience installs beside the venv.
KERNEL_STACK = ("ipykernel==7.4.0", "ipython==9.18.1", "matplotlib-inline==0.1.7", "bash_kernel==0.10.0")
# The notebook sessions' front end (Debian has no JupyterLab 4).
JUPYTERLAB = ("jupyterlab==4.6.6", "ipykernel==7.4.0")

DESCRIPTION = """Build the images kernels and sessions run in, without a container registry.

kge-base:bookworm is made with debootstrap from this machine's Debian mirror (or --base names a
Debian-like image a registry serves); kge-kernel (Python and bash kernels), kge-notebook (Skaha notebook
sessions) and the image of every kernelspec folder that holds a Dockerfile (python3-datascience, and an
operator's own in extra_kernelspec_dirs / KGE_KERNELSPEC_DIRS) are built on it. An image whose build
context is unchanged is kept, so this is cheap to run at every start. It reads the gateway's config file
and KGE_* env vars."""


def wheel_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kernel_gateway_ext" / "wheels"


def pinned_wheels(kind: str, pins: tuple[str, ...], python: str, root: Path | None = None) -> list[Path]:
    """`pins` and what they need, as wheels for an image's Python (e.g. 3.11.2), downloaded once
    per Python version and pin set into `root`/KIND-pyVERSION (the user's wheel cache) through this
    machine's package index: the image build itself reaches no index. deploy/prepare-wheels calls
    it too, for the gateway's own image."""
    cache = (root or wheel_cache()) / f"{kind}-py{python}"
    marker, pinned = cache / "PINS", " ".join(pins)
    if marker.is_file() and marker.read_text() == pinned:
        return sorted(cache.glob("*.whl"))
    cache.parent.mkdir(parents=True, exist_ok=True)
    print(f"build-images: downloading {pinned} and their dependencies for Python {python}", flush=True)
    tmp = Path(tempfile.mkdtemp(dir=cache.parent))
    try:  # whole or not at all
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", *pins, "--python-version", python,
                        "--only-binary=:all:", "-d", str(tmp)], check=True)
        (tmp / "PINS").write_text(pinned)
        shutil.rmtree(cache, ignore_errors=True)
        tmp.rename(cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sorted(cache.glob("*.whl"))


def kernel_wheels(python: str, root: Path | None = None) -> list[Path]:
    return pinned_wheels("kernel", KERNEL_STACK, python, root)


def lab_wheels(python: str, root: Path | None = None) -> list[Path]:
    return pinned_wheels("jupyterlab", JUPYTERLAB, python, root)


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
        builder = ImageBuilder(force=self.force)
        root = resource("docker")
        base = self.base or BASE_LOCAL
        if not self.base:
            self.ensure_local_base(builder)
        # Wheels are pinned: the pins and the Python they are for stand for them in the context
        # hash, so they are downloaded only when an image has to be built.
        python = builder.python_version(base, fallback=(root / "kernel", "os"))
        builder.build(root / "kernel", self.tag, base, extra=f"{' '.join(KERNEL_STACK)} {python}",
                      fetch_files=lambda: [(f"wheels/{w.name}", w) for w in kernel_wheels(python)])
        kernel_id = builder.image_id(self.tag) or ""
        # Images built on the kernel image are rebuilt whenever it changes.
        builder.build(root / "notebook", NOTEBOOK_IMAGE, self.tag, extra=f"{kernel_id} {' '.join(JUPYTERLAB)} {python}",
                      fetch_files=lambda: [(f"wheels/{w.name}", w) for w in lab_wheels(python)])
        for name, folder, image in self.kernelspec_images():
            print(f"build-images: kernelspec {name} has a Dockerfile: building {image}", flush=True)
            builder.build(folder, image, self.tag, extra=kernel_id)
        builder.remove_replaced()

    def kernelspec_images(self) -> list[tuple[str, Path, str]]:
        """(kernelspec, folder, image) of every kernelspec folder holding a Dockerfile."""
        ksm = GatewayKernelSpecManager(parent=self, log=self.log)
        out = []
        for name, folder in sorted(ksm.find_kernel_specs().items()):
            path = Path(folder)
            if not (path / "Dockerfile").is_file():
                continue
            meta = ksm.get_kernel_spec(name).metadata or {}  # parsed and validated by jupyter_client
            image = ((meta.get("kernel_provisioner") or {}).get("config") or {}).get("image")
            if not image:
                raise SystemExit(f"build-images: kernelspec {name} has a Dockerfile but its kernel.json names no "
                                 "image (metadata.kernel_provisioner.config.image)")
            out.append((name, path, image))
        return out

    def ensure_local_base(self, builder: ImageBuilder) -> None:
        if builder.image_id(BASE_LOCAL) is not None and not self.force:
            print(f"build-images: {BASE_LOCAL} exists, kept (--force rebuilds)", flush=True)
            return
        print(f"build-images: making {BASE_LOCAL} with debootstrap (1-2 minutes)", flush=True)
        script = resource_path("docker") / "base" / "make-base.sh"
        subprocess.run(["bash", str(script), BASE_LOCAL], check=True)
