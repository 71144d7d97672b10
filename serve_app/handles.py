"""Named Ray actors the API calls (the coordinator, each tenant's writer), looked up once.

``ray.get_actor`` blocks on the GCS, so it runs in a worker thread, never on the replica's event
loop; results of ``.remote()`` are awaited with a timeout. A handle whose actor died for good
(``RayActorError``) is dropped, so the next request looks the name up again and finds the
replacement the coordinator started.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError

from actors.common import COORDINATOR_NAME, writer_name
from ingest.core.errors import ClusterUnavailable, TenantUnavailable
from ingest.core.models import Tenant

log = logging.getLogger(__name__)


class ActorHandles:
    def __init__(self, namespace: str, call_timeout_s: float = 30.0) -> None:
        self.namespace = namespace
        self.call_timeout_s = call_timeout_s
        self._handles: dict[str, ActorHandle[Any]] = {}

    async def get(self, name: str) -> ActorHandle[Any]:
        """The named actor's handle; ``ClusterUnavailable`` when no such actor runs."""
        handle = self._handles.get(name)
        if handle is None:
            try:
                handle = await asyncio.to_thread(ray.get_actor, name, namespace=self.namespace)
            except ValueError as e:  # Ray's answer for "no actor by that name"
                raise ClusterUnavailable(f"{name} is not running") from e
            self._handles[name] = handle
        return handle

    def forget(self, name: str) -> None:
        self._handles.pop(name, None)

    async def call(self, name: str, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        """``await actor.method.remote(*args)``, bounded in time; a dead actor is forgotten."""
        handle = await self.get(name)
        try:
            ref = getattr(handle, method).remote(*args)
            return await asyncio.wait_for(ref, timeout_s or self.call_timeout_s)
        except RayActorError as e:
            self.forget(name)
            raise ClusterUnavailable(f"{name} is not available: {type(e).__name__}") from e
        except TimeoutError as e:
            raise ClusterUnavailable(f"{name} did not answer in time") from e

    # -- the actors the API talks to ---------------------------------------------------------
    async def coordinator(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        return await self.call(COORDINATOR_NAME, method, *args, timeout_s=timeout_s)

    async def writer(self, tenant: Tenant, method: str, *args: Any) -> Any:
        try:
            return await self.call(writer_name(tenant.slug), method, *args)
        except ClusterUnavailable as e:
            raise TenantUnavailable(f"the tenant's writer is not available (tenant suspended?): {e}") from e

    async def notify_coordinator(self) -> None:
        """Wake the coordinator's reconcile now; fire and forget (the periodic pass catches up)."""
        try:
            handle = await self.get(COORDINATOR_NAME)
            handle.notify.remote()
        except Exception as e:
            log.warning("coordinator not reachable for notify: %s", type(e).__name__)
            self.forget(COORDINATOR_NAME)
