"""The Skaha dialect's wire format: a job (a "session") as JSON, its events table, and the context."""
from __future__ import annotations

from typing import Any

from ...jobs import JobManager
from ...jobs.records import JobRecord, iso


async def session_model(jobs: JobManager, rec: JobRecord, external_base: str) -> dict[str, Any]:
    """`external_base`: how the caller reaches the gateway, e.g. http://host:8888/."""
    ram_in_use, cores_in_use = await jobs.usage(rec)
    uid, _, gid = jobs.user.partition(":")
    return {
        "id": rec.id, "userid": rec.owner, "runAsUID": uid, "runAsGID": gid or uid, "supplementalGroups": [],
        "appid": "<none>", "image": rec.image, "type": rec.type, "status": rec.status, "name": rec.name,
        "startTime": iso(rec.start_time or rec.created), "expiryTime": iso(rec.expiry),
        "connectURL": (external_base.rstrip("/") + jobs.notebook_path(rec.id)) if rec.type == "notebook"
        else "not-applicable", "requestedRAM": f"{rec.ram}G", "requestedCPUCores": str(rec.cores),
        "requestedGPUCores": str(rec.gpus) if rec.gpus else "<none>", "ramInUse": ram_in_use,
        "gpuRAMInUse": "<none>", "cpuCoresInUse": cores_in_use, "gpuUtilization": "<none>",
        "isFixedResources": True, "node": jobs.node_of(rec),
    }


def events_table(rec: JobRecord) -> str:
    """The events as `kubectl describe` prints them (what the skaha clients show)."""
    rows = [["TYPE", "REASON", "MESSAGE", "FIRST-TIME", "LAST-TIME"]]
    rows += [[kind, reason, msg.replace("\n", " "), iso(first) or "", iso(last) or ""]
             for kind, reason, msg, first, last in rec.events]
    if len(rows) == 1:
        return "<none>\n"
    widths = [max(len(str(row[i])) for row in rows) for i in range(5)]
    return "".join("   ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() + "\n" for row in rows)


def context(jobs: JobManager) -> dict[str, Any]:
    """What a job may ask for (GET …/context), from what this host offers."""
    cores, ram = jobs.allowed_cores(), jobs.allowed_ram()
    default_cores = jobs.default_cores if jobs.default_cores in cores else cores[0]
    default_ram = jobs.default_ram if jobs.default_ram in ram else ram[0]
    return {
        "cores": {"default": default_cores, "defaultRequest": default_cores, "defaultLimit": max(cores),
                  "defaultHeadless": default_cores, "options": cores},
        "memoryGB": {"default": default_ram, "defaultRequest": default_ram, "defaultLimit": max(ram),
                     "defaultHeadless": default_ram, "options": ram},
        "gpus": {"options": list(range(1, jobs.max_gpus + 1))},
        "maxInteractiveSessions": jobs.max_interactive_sessions,
    }
