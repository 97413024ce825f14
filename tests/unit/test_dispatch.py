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


async def call(
    reg: Registry, identity: Identity, method: str, params: list[Any]
) -> tuple[Any, ...]:
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


@pytest.mark.trio
async def test_a_vm_this_node_lacks_goes_to_the_forwarder_once() -> None:
    reg = registry()

    @reg.method("vm.start")
    async def start(ctx: CallContext, p: Params) -> Any:
        """Start."""
        name = p.name()
        raise errors.NotFound(f"vm {name!r} not found", {"vm": name})

    asked: list[tuple[str, dict[str, Any], bool]] = []

    async def forwarder(ctx: CallContext, method: str, params: dict[str, Any], vm: str) -> Any:
        asked.append((method, params, ctx.forwarded))
        if vm == "elsewhere":
            return True, {"name": "elsewhere", "state": "running"}
        return False, None

    reg.forwarder = forwarder
    ctx = CallContext(ADMIN)
    error, result = await reg.call(ctx, Request(1, "vm.start", [{"name": "elsewhere"}]))
    assert error is None and result == {"name": "elsewhere", "state": "running"}
    error, _ = await reg.call(ctx, Request(2, "vm.start", [{"name": "nowhere"}]))
    assert error is not None and error["code"] == "not_found"
    # a NotFound that is not about a VM, and calls that came forwarded, stay local
    error, _ = await reg.call(ctx, Request(3, "vm.get", [{"name": "ghost"}]))
    assert error is not None and error["code"] == "not_found"
    inner = CallContext(ADMIN)
    inner.forwarded = True
    error, _ = await reg.call(inner, Request(4, "vm.start", [{"name": "elsewhere"}]))
    assert error is not None and error["code"] == "not_found"
    assert asked == [
        ("vm.start", {"name": "elsewhere"}, False),
        ("vm.start", {"name": "nowhere"}, False),
    ]


def test_only_methods_registered_inline_run_inline() -> None:
    reg = Registry()

    @reg.method("session.hello", inline=True)
    async def hello(ctx: CallContext, p: Params) -> Any:
        """Hello."""
        return "hi"

    @reg.method("vm.get")
    async def get(ctx: CallContext, p: Params) -> Any:
        """Get."""
        return None

    assert reg.inline("session.hello")
    assert not reg.inline("vm.get")
    assert not reg.inline("no.such.method")
