"""Reading back what a flow sent to the Prefect server: events, artifacts and logs of a flow run."""

from __future__ import annotations

import time

from prefect.client.orchestration import get_client

# Events go out in the background (EventsWorker) and the server persists them in batches.
TIMEOUT_S = 60


def read_events(
    name: str,
    *,
    count: int = 1,
    resource_id: str | None = None,
    related_id: str | None = None,
    timeout_s: float = TIMEOUT_S,
) -> list:
    """The server's events named ``name`` (of that resource, or related to that resource), once at
    least ``count`` are there; fails after ``timeout_s``."""
    from prefect.events.filters import (
        EventFilter,
        EventNameFilter,
        EventRelatedFilter,
        EventResourceFilter,
    )

    event_filter = EventFilter(
        event=EventNameFilter(name=[name]),
        resource=EventResourceFilter(id=[resource_id]) if resource_id else None,
        related=EventRelatedFilter(id=[related_id]) if related_id else None,
    )
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            events = client.read_events(event_filter, limit=50).events
            if len(events) >= count or time.monotonic() > deadline:
                assert len(events) >= count, (
                    f"{len(events)} {name} events after {timeout_s} s, expected {count}"
                )
                return events
            time.sleep(0.5)


def flow_run_artifacts(flow_run_id) -> list:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


def flow_run_logs(flow_run_id, containing: str, timeout_s: float = TIMEOUT_S) -> list[str]:
    """The run's log messages, once one contains ``containing`` (logs are sent in batches too)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            messages = [
                log.message
                for log in client.read_logs(
                    log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                    limit=200,
                )
            ]
            if any(containing in message for message in messages) or time.monotonic() > deadline:
                assert any(containing in m for m in messages), (
                    f"no log line with {containing!r}: {messages}"
                )
                return messages
            time.sleep(0.5)
