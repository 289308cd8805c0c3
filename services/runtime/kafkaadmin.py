"""A Kafka admin client that keeps working while one broker of the cluster is down.

aiokafka's `AIOKafkaAdminClient` sends every request that is not addressed to a node (describe topics, the
cluster's metadata, list groups...) to a node drawn at random from the cluster metadata. A broker that was
stopped or crashed stays in that metadata until the controller fences it (seconds later), so with one of
three brokers down a third of those requests failed at once with NodeNotReadyError: `flows topics apply`,
`flows topics list` and `flows lag` failed at random exactly when an operator needs them.
`admin_client` tries the nodes in random order and takes the first it can reach; it fails only when none can
be reached (the error names the last). `list_consumer_groups` asks the brokers it can reach (a group whose
coordinator is down moves to another broker).

Requests for the controller (create topics, add partitions, delete topics) went to the node the metadata names
as controller, and aiokafka waited for that one node until the request timed out. In KRaft mode that name is a
live broker drawn at random by the broker that answered the metadata request, whose view can still hold a
broker that has just stopped: then `flows topics apply` waited out its 30 s request timeout and failed (as a
CI run's three-broker test did). Every KRaft broker forwards these requests to the active controller (KIP-590),
so they go to the named node when it can be reached and otherwise to any node that can. Other requests addressed
to a node (a group coordinator) are left as aiokafka sends them.
"""

from __future__ import annotations

import random
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, NodeNotReadyError

from services.runtime.settings import bootstrap_list


class _AnyLiveNodeAdmin(AIOKafkaAdminClient):
    async def _send_to_first_live(self, nodes: list[int], request: Any) -> Any:
        """`request` sent to the first of `nodes` that can be reached; raises the last node's error when none can
        (`nodes` must not be empty)."""
        unreachable: Exception = NodeNotReadyError("no Kafka node to send to")
        for node in nodes:
            if not await self._client.ready(node):
                unreachable = NodeNotReadyError(f"Kafka node {node} is not reachable")
                continue
            try:
                return await self._client.send(node, request)
            except (NodeNotReadyError, KafkaConnectionError) as exc:  # went down between ready() and send
                unreachable = exc
        raise unreachable

    async def _send_request(self, request: Any, node_id: int | None = None) -> Any:
        if node_id is not None:
            return await super()._send_request(request, node_id)
        nodes = [broker.nodeId for broker in self._client.cluster.brokers()]
        if not nodes:  # no node in the metadata at all: aiokafka's own answer
            return await super()._send_request(request)
        random.shuffle(nodes)
        return await self._send_to_first_live(nodes, request)

    async def _send_to_controller(self, request: Any) -> Any:
        if self._client.cluster.controller is None:
            await self._client.force_metadata_update()
        controller = self._client.cluster.controller
        if controller is None:  # no controller in the metadata at all: aiokafka's own answer
            return await super()._send_to_controller(request)
        others = [b.nodeId for b in self._client.cluster.brokers() if b.nodeId != controller.nodeId]
        random.shuffle(others)
        return await self._send_to_first_live([controller.nodeId, *others], request)

    async def list_consumer_groups(self, broker_ids: list[int] | None = None) -> list[tuple[Any, ...]]:
        if broker_ids is None:
            metadata = await self._get_cluster_metadata()
            broker_ids = [broker[0] for broker in metadata.brokers if await self._client.ready(broker[0])]
        return await super().list_consumer_groups(broker_ids)


def admin_client(bootstrap: str | list[str], **options: Any) -> AIOKafkaAdminClient:
    """An admin client of the cluster at `bootstrap` ("host:port,host:port" or a list) whose requests that
    any node can answer go to a node that is up."""
    return _AnyLiveNodeAdmin(bootstrap_servers=bootstrap_list(bootstrap), **options)
