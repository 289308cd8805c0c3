"""How a service reads and writes a flow instance: one place for the steps every writer repeats.

`read(instance)` is the instance as its history says (contracts.instance.FlowInstance). A command
handler opens with `handling(msg)`: one transaction that records the message as processed (a
duplicate gets None: nothing to do), in which `Handling.read` refuses a missing instance or a
command its state does not allow, and `Handling.append` writes payloads (the event type from the
payload class, flows.TYPE_OF) with the consumed message id as their causation, in that same
transaction. Long work after the command runs under a per-instance lock: `working(namespace,
instance)` holds the lock and re-reads the instance, and `append` writes the outcome after the
version it read (a stream that moved meanwhile raises ConcurrencyError).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import asyncpg

from contracts import flows
from contracts.instance import FlowInstance
from contracts.states import Actor, IllegalTransition, apply_event
from services.runtime.broker import Incoming, Refused
from services.runtime.eventstore import EventStore, Guard, NewEvent
from services.runtime.filestore import FileStore
from services.runtime.locks import instance_lock
from services.runtime.read_models import instance_stream


def new_event(payload: flows.Payload, actor: str, *, data: dict[str, Any] | None = None,
              **metadata: Any) -> NewEvent:
    """The event of `payload`, its type from the payload class; `data` replaces the payload's dump
    where the history keeps less than the message carried (a TS request without its sealed box)."""
    return NewEvent(type=flows.TYPE_OF[type(payload)], data=payload.model_dump(mode="json") if data is None else data,
                    actor=actor, metadata=metadata)


@dataclass(frozen=True)
class Instances:
    """The flow instances as one service (`actor`, dedup name `consumer`) reads and writes them."""

    pool: asyncpg.Pool
    store: EventStore
    actor: str
    consumer: str

    async def read(self, instance: int) -> FlowInstance:
        return FlowInstance.replay(instance, await self.store.read_stream(instance_stream(instance)))

    async def append(self, current: FlowInstance, *payloads: flows.Payload, actor: str | None = None,
                     conn: asyncpg.Connection | None = None, publish: bool = True, data: dict[str, Any] | None = None,
                     expect: bool = True, guard: Guard | None = None, **metadata: Any) -> FlowInstance:
        """Appends `payloads` after `current` and returns the instance after them; with `expect=False`,
        wherever the stream is, and `current` comes back as it was (the events in between were not read).
        In a caller's transaction (`conn`) without a savepoint: every caller (a command's `handling`, the loader's
        outcome) lets an error of the append end its transaction, so the savepoint's two round trips bought
        nothing. `guard`: the append is done only when its row is there (EventStore.append; GuardFailed)."""
        events = [new_event(p, actor or self.actor, data=data, **metadata) for p in payloads]
        stored = await self.store.append(instance_stream(current.number), events,
                                         expected_version=current.version if expect else None,
                                         key=str(current.number), conn=conn, publish=publish, savepoint=False,
                                         guard=guard)
        if not expect:
            return current
        for event in stored:
            current = current.apply(event)
        return current

    @contextlib.asynccontextmanager
    async def handling(self, msg: Incoming) -> AsyncIterator[Handling | None]:
        """One transaction for a command: None when this consumer already processed `msg`."""
        async with self.pool.acquire() as conn, conn.transaction():
            async with self.store.first_delivery(conn, consumer=self.consumer, message_id=msg.message_id) as fresh:
                pass
            yield Handling(self, conn, msg) if fresh else None

    @contextlib.asynccontextmanager
    async def working(self, namespace: int, instance: int) -> AsyncIterator[FlowInstance | None]:
        """The instance, re-read under this service's work lock; None when another task holds the lock."""
        async with instance_lock(self.pool, namespace, instance) as held:
            yield await self.read(instance) if held else None


@dataclass
class ServiceDeps:
    """What a flow service's handlers take (loader, formatter, TS gateway extend it with their own): the
    pool, the event store and the file store. The subclass names its service: `ACTOR` writes its events,
    `CONSUMER` is its dedup name; `instances` reads and writes flow instances as that service."""

    ACTOR: ClassVar[Actor]
    CONSUMER: ClassVar[str]
    pool: asyncpg.Pool
    store: EventStore
    files: FileStore

    @property
    def instances(self) -> Instances:
        return Instances(self.pool, self.store, actor=self.ACTOR.value, consumer=self.CONSUMER)


@dataclass(frozen=True)
class Handling:
    """A command being handled: its transaction (`conn`) already holds the message's dedup record."""

    instances: Instances
    conn: asyncpg.Connection
    msg: Incoming

    async def read(self, instance: int, *, allows: Sequence[tuple[type[flows.Payload], Actor]] = (),
                   refusal: str = "cannot be handled") -> FlowInstance:
        """The instance; Refused when it does not exist or its state does not allow each of `allows`."""
        current = await self.instances.read(instance)
        if not current.exists:
            raise Refused(f"instance {instance} does not exist")
        self.check(current, allows, refusal)
        return current

    async def repeats(self, instance: int, command: type[flows.Payload], seen_version: int | None) -> int | None:
        """The version of an earlier `command` recorded in the instance's history after `seen_version` (the
        version its requester read when it asked), None when there is none: a request asked again while the
        first waited for its service repeats it, and is acknowledged without doing anything twice."""
        if seen_version is None:
            return None
        found = await self.conn.fetchval(
            "SELECT min(version) FROM events WHERE stream_id = $1 AND type = $2 AND version > $3",
            instance_stream(instance), flows.TYPE_OF[command], seen_version)
        return None if found is None else int(found)

    @staticmethod
    def check(current: FlowInstance, allows: Sequence[tuple[type[flows.Payload], Actor]],
              refusal: str = "cannot be handled") -> None:
        """Refused unless the instance's state allows each of `allows` (payload class, actor)."""
        try:
            for model, actor in allows:
                apply_event(current.state, flows.TYPE_OF[model], {}, actor)
        except IllegalTransition as exc:
            raise Refused(f"instance {current.number} {refusal}: {exc}") from exc

    async def append(self, current: FlowInstance, *payloads: flows.Payload, actor: str | None = None,
                     publish: bool = True, data: dict[str, Any] | None = None, caused: bool = True) -> FlowInstance:
        """Appends in the command's transaction; with `caused`, each event names the consumed message
        as its causation (metadata causation_id)."""
        metadata: dict[str, Any] = {"causation_id": self.msg.message_id} if caused else {}
        return await self.instances.append(current, *payloads, actor=actor, conn=self.conn, publish=publish,
                                           data=data, **metadata)
