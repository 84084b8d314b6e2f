"""Skaha job requests are parsed and checked once, before anything is created."""
from __future__ import annotations

import pytest

from kernel_gateway_ext.errors import BadRequest
from kernel_gateway_ext.jobs.request import JobRequest, Offer, parse_job_request

OFFER = Offer(cores=[1, 2, 4], ram=[1, 2, 4, 8], max_gpus=0, default_cores=1, default_ram=4)


def test_a_request_with_repeated_keys_and_env() -> None:
    req = parse_job_request({"name": ["first", "job-1"], "image": ["python:3"], "cores": ["2"], "ram": ["8"],
                             "env": ["A=1", "B=x=y"], "cmd": ["sh"], "args": ["-c 'echo hi'"]}, OFFER)
    assert req == JobRequest(kind="headless", name="job-1", image="python:3", cores=2, ram=8, gpus=0, cmd="sh",
                             args="-c 'echo hi'", env={"A": "1", "B": "x=y"})


def test_defaults() -> None:
    req = parse_job_request({"name": ["n"], "image": ["i"], "type": ["NOTEBOOK"]}, OFFER)
    assert (req.kind, req.cores, req.ram, req.gpus) == ("notebook", 1, 4, 0)


@pytest.mark.parametrize("params, says", [
    ({"name": ["n"], "image": ["i"], "type": ["carta"]}, "not offered"),
    ({"name": ["n"], "image": ["i"], "type": ["nope"]}, "unknown session type"),
    ({"image": ["i"]}, "'name' is required"),
    ({"name": ["bad name"], "image": ["i"]}, "'name' is required"),
    ({"name": ["n"]}, "'image' is required"),
    ({"name": ["n"], "image": ["i"], "cores": ["3"]}, "cores=3 is not offered"),
    ({"name": ["n"], "image": ["i"], "ram": ["lots"]}, "ram must be an integer"),
    ({"name": ["n"], "image": ["i"], "gpus": ["1"]}, "gpus=1 is not offered"),
    ({"name": ["n"], "image": ["i"], "env": ["NOEQUALS"]}, "malformed env"),
    ({"name": ["n"], "image": ["i"], "env": ["1X=y"]}, "malformed env"),
    ({"name": ["n"], "image": ["i"], "args": ["'unclosed"]}, "malformed args"),
])
def test_bad_requests_say_what_is_wrong(params: dict, says: str) -> None:
    with pytest.raises(BadRequest) as e:
        parse_job_request(params, OFFER)
    assert says in e.value.message
