"""The launch request: built once, env filtered once, what a pooled kernel can serve."""
from __future__ import annotations

import pytest

from kernel_gateway_ext.containers.limits import KernelLimits
from kernel_gateway_ext.containers.spec import BindMount
from kernel_gateway_ext.provisioners.launch import LaunchRequest, filter_env


def test_only_kernel_names_and_the_allowlist_pass() -> None:
    asked = {"KERNEL_USERNAME": "ann", "ALLOWED_ONE": 1, "PATH": "/evil", "GATEWAY_SECRET": "x"}
    assert filter_env(asked, ["ALLOWED_ONE"]) == {"KERNEL_USERNAME": "ann", "ALLOWED_ONE": "1"}
    assert filter_env(None, ["X"]) == {}


def test_build_keeps_the_callers_own_env_apart_and_on_top() -> None:
    r = LaunchRequest.build(owner="ann", kernel_name="python3", requested_env={"KERNEL_X": "1", "HOME": "/root"},
                            user_env={"KERNEL_X": "2", "MY_VAR": "v"})
    assert r.env == {"KERNEL_X": "1"} and r.user_env == {"KERNEL_X": "2", "MY_VAR": "v"}
    assert r.all_env == {"KERNEL_X": "2", "MY_VAR": "v"}


@pytest.mark.parametrize("kw, plain", [
    ({}, True),
    ({"limits": KernelLimits()}, True),
    ({"limits": KernelLimits(memory_bytes=2**28)}, False),
    ({"mounts": [BindMount("/srv/f/1", "/home/work/data")]}, False),
    ({"labels": {"org.example": "x"}}, False),
])
def test_what_a_pooled_kernel_already_is(kw: dict, plain: bool) -> None:
    assert LaunchRequest.build(owner="ann", kernel_name="python3", **kw).is_plain is plain


def test_a_request_is_immutable() -> None:
    r = LaunchRequest.build(owner="ann", kernel_name="python3")
    with pytest.raises(AttributeError):
        r.owner = "bob"  # type: ignore[misc]
