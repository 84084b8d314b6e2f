"""The authorizer alone: who may see and act on what, with no server or Docker."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from kernel_gateway_ext.auth import Authorizer, Identity
from kernel_gateway_ext.errors import KernelNotFound


@dataclass
class Thing:
    owner: str


ALICE, BOB, OPERATOR = Identity("alice"), Identity("bob"), Identity("admin", admin=True)


@pytest.mark.parametrize("action", ["read", "write", "execute"])
def test_owners_and_operators_only(action):
    auth = Authorizer()
    assert auth.is_authorized(ALICE, action, "alice")
    assert not auth.is_authorized(BOB, action, "alice")
    assert auth.is_authorized(OPERATOR, action, "alice")


def test_another_users_thing_is_missing_not_forbidden():
    auth = Authorizer()
    mine = Thing("alice")
    assert auth.check(ALICE, mine, lambda: KernelNotFound("no such kernel")) is mine
    with pytest.raises(KernelNotFound) as e:
        auth.check(BOB, mine, lambda: KernelNotFound("no such kernel"), "write")
    assert e.value.status == 404
    with pytest.raises(KernelNotFound):
        auth.check(ALICE, None, lambda: KernelNotFound("no such kernel"))


def test_visible_keeps_order_and_filters():
    auth = Authorizer()
    things = [Thing("alice"), Thing("bob"), Thing("alice")]
    assert auth.visible(ALICE, things) == [things[0], things[2]]
    assert auth.visible(OPERATOR, things) == things
    assert auth.visible(Identity("carol"), things) == []


def test_scope_for_lookups_by_name():
    auth = Authorizer()
    assert auth.scope(ALICE) == "alice"
    assert auth.scope(OPERATOR) is None
    # A key pair with the admin flag is an operator too, whatever its user name.
    assert auth.scope(Identity("ops", admin=True, access_key="AK")) is None
