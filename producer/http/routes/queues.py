"""/v1/queues: what the queue families really hold (waiting in every priority list, and held
by workers), the number KEDA's metrics-api trigger scales the workers on."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from lcm_fleet.consuming.depth import family_depths
from lcm_fleet.contract import QUEUE_WEBHOOKS, interactive_queue, size_queue
from lcm_fleet.served import family_of, known_queues, read_adverts
from producer.http.deps import KeyDep, ServicesDep
from producer.http.errors import ApiError, responses
from producer.http.schemas import QueueDepthView, QueuesView
from producer.http.services import Services
from producer.http.settings import parse_size
from producer.queue import cached_broker

router = APIRouter(prefix="/v1/queues", tags=["queues"])

SIZE_ALLOWED = "WIDTHxHEIGHT, e.g. 512x512 (a size class of LCM_QUEUE)"


def _families(services: Services, sizes: list[str], unsized: bool) -> list[str]:
    """The interactive queues asked for; none asked: every family of LCM_QUEUE known (the
    base queue, the queues producers noted, the queues workers advertise)."""
    base = services.settings.queue
    if sizes or unsized:
        picked = [base] if unsized else []
        for index, text in enumerate(sizes):
            try:
                width, height = parse_size(text)
            except ValueError as e:
                raise ApiError(
                    400,
                    f"query 'size' got {text[:40]!r}: {e}",
                    param=f"size[{index}]",
                    value=text,
                    allowed=SIZE_ALLOWED,
                    code="invalid_size",
                ) from e
            picked.append(size_queue(base, width, height))
        return picked
    broker = cached_broker(services.settings)
    served, _expired = read_adverts(broker)
    seen = known_queues(broker) | served.queues()
    family = sorted(
        {interactive_queue(q) for q in seen if family_of(q) == base and q != QUEUE_WEBHOOKS}
    )
    return [base, *(q for q in family if q != base)]


@router.get(
    "",
    response_model=QueuesView,
    responses=responses(400, 401, 429),
    summary="Jobs waiting and held per queue family (what KEDA scales the workers on)",
)
def get_queues(
    services: ServicesDep,
    key: KeyDep,
    size: Annotated[
        list[str] | None,
        Query(description="size classes to count (repeat it); none: every family known"),
    ] = None,
    unsized: Annotated[
        bool, Query(description="also count the family of jobs without a size (LCM_QUEUE)")
    ] = False,
) -> QueuesView:
    depths = family_depths(
        cached_broker(services.settings), _families(services, size or [], unsized)
    )
    views = [
        QueueDepthView(
            queue=d.queue,
            interactive_waiting=d.interactive_waiting,
            bulk_waiting=d.bulk_waiting,
            waiting=d.waiting,
            held=d.held,
            total=d.total,
        )
        for d in depths
    ]
    return QueuesView(
        queues=views,
        waiting=sum(v.waiting for v in views),
        held=sum(v.held for v in views),
        total=sum(v.total for v in views),
    )
