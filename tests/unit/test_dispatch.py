from __future__ import annotations

from typing import Any

import pytest

from novacron import errors
from novacron.auth.identity import Identity
from novacron.rpc.codec import Request
from novacron.rpc.dispatch import CallContext, Registry
from novacron.rpc.params import Params

ADMIN = Identity(kind="unix", user="root", roles=frozenset({"admin"}))
NOBODY = Identity(kind="unix", user="nobody")


def registry() -> Registry:
    reg = Registry()

    @reg.method("vm.get")
    async def get(ctx: CallContext, p: Params) -> Any:
        """Get."""
        name = p.name()
        p.done()
        if name == "boom":
            raise RuntimeError("secret detail")
        if name == "ghost":
            raise errors.NotFound("no ghost")
        return {"name": name}

    @reg.method("session.hello")
    async def hello(ctx: CallContext, p: Params) -> Any:
        """Hello."""
        return "hi"

    @reg.method("vm.unlisted")
    async def unlisted(ctx: CallContext, p: Params) -> Any:
        """Not in the policy table."""
        return "should never run"

    return reg


async def call(reg: Registry, identity: Identity, method: str, params: list[Any]) -> tuple:
    return await reg.call(CallContext(identity), Request(1, method, params))


async def test_success_and_errors() -> None:
    reg = registry()
    assert await call(reg, ADMIN, "vm.get", [{"name": "a"}]) == (None, {"name": "a"})
    err, _ = await call(reg, ADMIN, "vm.get", [{"name": "ghost"}])
    assert err["code"] == "not_found"
    err, _ = await call(reg, ADMIN, "vm.nope", [])
    assert err["code"] == "method_not_found"
    err, _ = await call(reg, ADMIN, "vm.get", [1, 2])
    assert err["code"] == "invalid_params"


async def test_unexpected_exceptions_do_not_leak(caplog: pytest.LogCaptureFixture) -> None:
    err, result = await call(registry(), ADMIN, "vm.get", [{"name": "boom"}])
    assert err["code"] == "internal"
    assert "secret" not in err["message"]
    assert result is None
    assert "secret detail" in caplog.text  # but the operator sees it in the log


async def test_authorisation_before_arguments() -> None:
    reg = registry()
    assert await call(reg, NOBODY, "session.hello", []) == (None, "hi")
    err, _ = await call(reg, NOBODY, "vm.get", [{"bad": "args"}])
    assert err["code"] == "permission_denied"
    err, _ = await call(reg, ADMIN, "vm.unlisted", [])
    assert err["code"] == "permission_denied"  # deny by default


def test_duplicate_registration_is_refused() -> None:
    reg = registry()
    with pytest.raises(ValueError, match="twice"):
        reg.method("vm.get")(lambda ctx, p: None)  # type: ignore[arg-type,return-value]
