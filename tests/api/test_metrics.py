"""GET /metrics: Prometheus text with live kernel gauges, start counters and Docker latency."""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics(gateway) -> None:
    c = gateway.client
    assert (await c.fetch("GET", "/metrics", token=None)).status == 401
    kid = (await c.fetch("POST", "/api/kernels", {"name": "python3"})).json["id"]
    r = await c.fetch("GET", "/metrics")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    m = samples(r.body.decode())
    assert m[("kge_kernels", (("kernelspec", "python3"), ("state", "idle")))] == 1
    assert m[("kge_kernel_starts_total", (("kernelspec", "python3"), ("source", "cold")))] == 1
    assert m[("kge_kernel_start_seconds_count", (("source", "cold"),))] == 1
    assert m[("kge_docker_call_seconds_count", (("method", "create_container"),))] >= 1
    await c.fetch("DELETE", f"/api/kernels/{kid}")
    m = samples((await c.fetch("GET", "/metrics")).body.decode())
    assert not any(name == "kge_kernels" for name, _ in m)


async def test_unknown_kernelspec_names_grow_no_series_and_echo_little(gateway) -> None:
    """Every refused name used to become a permanent series (200 names of 10 KB: /metrics 4 MB)."""
    c = gateway.client
    # The request-latency series of this route and status, and of /metrics itself, exist once (by route
    # template, never by name): made before measuring.
    assert (await c.fetch("POST", "/api/kernels", {"name": "no-such-warm-up"})).status == 404
    await c.fetch("GET", "/metrics")
    before = len((await c.fetch("GET", "/metrics")).body)
    for i in range(50):
        r = await c.fetch("POST", "/api/kernels", {"name": f"no-such-{i}-" + "x" * 10_000})
        assert r.status == 404 and len(r.body) < 512, (r.status, len(r.body))
    r = await c.fetch("POST", "/api/kernels", {"name": "../../etc/passwd"})
    assert r.status == 404
    after = (await c.fetch("GET", "/metrics")).body
    assert b"no-such" not in after and len(after) < before + 2048, (before, len(after))


async def test_the_event_loops_stalls_are_measured_from_inside(gateway) -> None:
    """A callback that blocks the loop (here on purpose: the in-process gateway shares the test's
    loop) shows as the loop's lag: the worst of the last minute, and in the histogram."""
    import asyncio
    import time

    await asyncio.sleep(0.2)  # the timer has ticked on an idle loop
    before = samples((await gateway.client.fetch("GET", "/metrics")).body.decode())
    time.sleep(0.3)  # noqa: ASYNC251 - the stall being measured
    await asyncio.sleep(0.1)
    after = samples((await gateway.client.fetch("GET", "/metrics")).body.decode())
    assert 0.25 <= after[("kge_event_loop_lag_max_seconds", ())] < 5
    over = (("le", "0.25"),)
    assert (after[("kge_event_loop_lag_seconds_count", ())] - after[("kge_event_loop_lag_seconds_bucket", over)]
            > before[("kge_event_loop_lag_seconds_count", ())] - before[("kge_event_loop_lag_seconds_bucket", over)])
