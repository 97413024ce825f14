"""VM records: sqlite is the authority, reads are served from a copy in memory.

Every write goes through :class:`Records` (the store's only writer in the daemon): the
row is committed first, then the copy is updated, so the copy never shows something
the database does not hold. Reads cost no thread hop and no JSON decoding.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from novacron.blocking import Pool
from novacron.state.db import StateStore, VmRecord


class Records:
    def __init__(self, store: StateStore, pool: Pool) -> None:
        self._store = store
        self._pool = pool
        self._by_name: dict[str, VmRecord] | None = None

    async def reload(self) -> dict[str, VmRecord]:
        rows = await self._pool.run(self._store.list_vms)
        self._by_name = {r.name: r for r in rows}
        return self._by_name

    async def _all(self) -> dict[str, VmRecord]:
        return self._by_name if self._by_name is not None else await self.reload()

    async def get(self, name: str) -> VmRecord | None:
        return (await self._all()).get(name)

    async def all(self) -> list[VmRecord]:
        by_name = await self._all()
        return [by_name[n] for n in sorted(by_name)]

    async def insert(
        self,
        name: str,
        uuid: str,
        tenant: str,
        spec: dict[str, Any],
        placement: dict[str, Any] | None = None,
        desired_state: str = "stopped",
    ) -> VmRecord:
        by_name = await self._all()
        rec = await self._pool.run(
            self._store.insert_vm, name, uuid, tenant, spec, placement, desired_state
        )
        by_name[name] = rec
        return rec

    async def set_desired_state(self, name: str, state: str) -> None:
        by_name = await self._all()
        stamp = await self._pool.run(self._store.set_desired_state, name, state)
        if name in by_name:
            by_name[name] = replace(by_name[name], desired_state=state, updated_at=stamp)

    async def set_uuid(self, name: str, uuid: str) -> None:
        by_name = await self._all()
        stamp = await self._pool.run(self._store.set_uuid, name, uuid)
        if name in by_name:
            by_name[name] = replace(by_name[name], uuid=uuid, updated_at=stamp)

    async def set_spec(
        self, name: str, spec: dict[str, Any], placement: dict[str, Any] | None
    ) -> None:
        by_name = await self._all()
        stamp = await self._pool.run(self._store.set_spec, name, spec, placement)
        if name in by_name:
            by_name[name] = replace(by_name[name], spec=spec, placement=placement, updated_at=stamp)

    async def delete(self, name: str) -> None:
        by_name = await self._all()
        await self._pool.run(self._store.delete_vm, name)
        by_name.pop(name, None)
