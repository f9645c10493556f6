"""deployments/automations.py against the harness's Prefect server: the automations it creates, and
an event that reaches a webhook on 127.0.0.1 through them."""

from __future__ import annotations

import json
import queue
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client

from deployments.automations import automations, install
from tasks.events import EVENTS, MODEL_PROMOTED, emit_model_promoted
from tasks.store import Store


@pytest.fixture
def webhook():
    """An HTTP server on 127.0.0.1 that queues the JSON bodies posted to it; yields (url, queue)."""
    received: queue.Queue = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            received.put(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()
    server.server_close()


def test_one_automation_per_event_replaced_when_installed_again(webhook):
    url, _ = webhook
    block_id = CustomWebhookNotificationBlock(
        name="aml-smear", url=url, json_data={"subject": "{{subject}}", "text": "{{body}}"}
    ).save("aml-alerts-structure", overwrite=True)
    assert [a.trigger.expect for a in automations(block_id)] == [{event} for event in EVENTS]
    first = install("custom-webhook/aml-alerts-structure")
    second = install("custom-webhook/aml-alerts-structure")
    with get_client(sync_client=True) as client:
        for automation in automations(block_id):
            [stored] = client.read_automations_by_name(automation.name)
            assert stored.id in second and stored.id not in first
            assert stored.actions[0].block_document_id == block_id
            assert stored.trigger.expect == automation.trigger.expect


def test_a_promotion_event_reaches_the_webhook(webhook):
    url, received = webhook
    CustomWebhookNotificationBlock(
        name="aml-smear", url=url, json_data={"subject": "{{subject}}", "text": "{{body}}"}
    ).save("aml-alerts", overwrite=True)
    install("custom-webhook/aml-alerts")
    emit_model_promoted(
        Store("/data/store"), "v-20261130-abc", "v-20261129-def", "no champion yet", by="retrain"
    )
    try:
        body = received.get(timeout=90)
    except queue.Empty:
        pytest.fail(f"no notification for {MODEL_PROMOTED} within 90 s")
    assert body["subject"] == "aml-smear: model v-20261130-abc is the champion"
    assert (
        "v-20261130-abc replaced v-20261129-def in /data/store (retrain): no champion yet"
        in body["text"]
    )
