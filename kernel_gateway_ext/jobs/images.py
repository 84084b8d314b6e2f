"""Which images a Skaha job may name: the operator's map of names clients send (glob patterns) to
local images, each built with the job kinds it runs (a label set by docker/)."""
from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any

from ..containers.backend import ContainerBackend
from ..errors import BadRequest
from .records import LABEL_SESSION_TYPES

IMAGE_LABEL = "org.kge.image"  # every image docker/ builds


async def local_images(backend: ContainerBackend) -> dict[str, dict[str, Any]]:
    """Local images built for jobs: tag -> {types, digest}."""
    out: dict[str, dict[str, Any]] = {}
    for tags, labels, image_id in await backend.labelled_images(IMAGE_LABEL):
        types = [t for t in (labels.get(LABEL_SESSION_TYPES) or "").split(",") if t]
        for tag in tags:
            out[tag] = {"types": types, "digest": image_id}
    return out


def catalogue(image_map: Mapping[str, str], local: Mapping[str, dict[str, Any]], kind: str | None = None) -> list[dict[str, Any]]:
    """What a client may ask for: each mapped name whose image is here, as the clients list it."""
    items = []
    for name, target in sorted(image_map.items()):
        if target not in local:
            continue
        shown = name.replace(":*", ":latest").replace("*", "latest")
        items.append({"id": shown, "types": local[target]["types"], "digest": local[target]["digest"]})
    return [i for i in items if kind in i["types"]] if kind else items


def resolve(image_map: Mapping[str, str], local: Mapping[str, dict[str, Any]], name: str, kind: str) -> str:
    """The local image for a requested name and job kind, or a 400 that says what runs here."""
    for pattern, target in image_map.items():
        if fnmatch.fnmatchcase(name, pattern) and target in local:
            if kind not in local[target]["types"]:
                supported = ", ".join(local[target]["types"])
                raise BadRequest(f"image {name!r} cannot run {kind} sessions; it supports {supported}")
            return target
    known = ", ".join(i["id"] for i in catalogue(image_map, local)) or "none"
    raise BadRequest(f"unknown image {name!r}; this gateway runs: {known}")
