"""build-images on a real engine: a rebuilt image does not leave the one it replaced behind (each
rebuild of the kernel images left hundreds of MB untagged), unless a container still uses it."""
from __future__ import annotations

import uuid
from pathlib import Path

import docker
import pytest

from kernel_gateway_ext.containers.images import BASE_LOCAL, ImageBuilder


def context(folder: Path, text: str) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "Dockerfile").write_text("ARG BASE\nFROM ${BASE}\nCOPY note /note\n")
    (folder / "note").write_text(text)
    return folder


def test_a_rebuild_removes_the_image_it_replaced_unless_a_container_uses_it(need_docker, docker_client,
                                                                           tmp_path: Path) -> None:
    if not any(BASE_LOCAL in i.tags for i in docker_client.images.list(name=BASE_LOCAL.split(":")[0])):
        pytest.fail(f"{BASE_LOCAL} is missing: scripts/setup-lib.sh ensure_images makes it")
    tag = f"kge-build-test-{uuid.uuid4().hex[:8]}:latest"
    builder = ImageBuilder()
    made: list[str] = []
    container = None
    try:
        builder.build(context(tmp_path / "c", "one"), tag, BASE_LOCAL)
        first = builder.image_id(tag)
        assert first and not builder.replaced
        made.append(first)
        builder.build(context(tmp_path / "c", "one"), tag, BASE_LOCAL)  # up to date: nothing replaced
        assert builder.image_id(tag) == first and not builder.replaced

        builder.build(context(tmp_path / "c", "two"), tag, BASE_LOCAL)
        second = builder.image_id(tag)
        assert second and second != first
        made.append(second)
        builder.remove_replaced()
        with pytest.raises(docker.errors.ImageNotFound):
            docker_client.images.get(first)

        # A container made from the current image keeps it when the next build replaces it.
        container = docker_client.containers.create(second, ["true"])
        builder.build(context(tmp_path / "c", "three"), tag, BASE_LOCAL)
        made.append(builder.image_id(tag) or "")
        builder.remove_replaced()
        assert docker_client.images.get(second).id == second
    finally:
        if container is not None:
            container.remove(force=True)
        for image in reversed(made):
            try:
                docker_client.images.remove(image, force=True)
            except docker.errors.ImageNotFound:
                pass
