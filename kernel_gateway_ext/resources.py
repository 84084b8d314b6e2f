"""Files the package ships: the image build contexts (docker/) and the kernelspecs.

In a wheel they are package data under ``kernel_gateway_ext/share/`` (setup.py maps the top-level
folders there), read with importlib.resources; in a source checkout (an editable install) they are
the top-level folders themselves.
"""
from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parent.parent


class ResourceMissing(RuntimeError):
    """The installation lacks a folder it ships: a broken install, said plainly."""


def resource(name: str) -> Traversable:
    """The shipped folder ``name`` ('docker' or 'kernelspecs')."""
    packaged = files("kernel_gateway_ext") / "share" / name
    if packaged.is_dir():
        return packaged
    source = SOURCE_ROOT / name
    if (SOURCE_ROOT / "pyproject.toml").is_file() and source.is_dir():
        return source
    raise ResourceMissing(f"kernel_gateway_ext ships {name}/, but it is not in {packaged}: reinstall the package")


def resource_path(name: str) -> Path:
    """The shipped folder as a real directory (kernelspec managers and scripts need one; a wheel
    installs unzipped, so it always is)."""
    found = resource(name)
    path = Path(str(found))
    if not path.is_dir():
        raise ResourceMissing(f"{name}/ is inside an archive ({found}); install the package unzipped")
    return path


def walk(root: Traversable, prefix: str = "") -> list[tuple[str, Traversable]]:
    """Every file under ``root`` as (relative path, file), sorted; caches are skipped."""
    out: list[tuple[str, Traversable]] = []
    for child in root.iterdir():
        rel = f"{prefix}{child.name}"
        if child.name == "__pycache__":
            continue
        if child.is_dir():
            out += walk(child, rel + "/")
        elif child.is_file():
            out.append((rel, child))
    return sorted(out)
