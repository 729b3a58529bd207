"""Read receipts: one per burst, for its last message (Meta marks the earlier ones read with it)."""

from __future__ import annotations

from tests.helpers import envelope, import_examples, message, post_webhook, run_worker


def test_a_burst_gets_one_read_receipt_for_its_last_message(app, graph):
    import_examples(app)
    burst = [message("8100", body=text) for text in ("hi", "hello", "hey")]
    for msg in burst:  # stored before any worker runs: three waiting messages
        assert post_webhook(app.test_client(), envelope([msg])).status_code == 200
    run_worker(app)
    assert len(graph.texts("8100")) == 3
    receipts = [r["body"]["message_id"] for r in graph.requests if r["body"].get("status") == "read"]
    assert receipts == [burst[-1]["id"]]


def test_a_conversation_gets_a_receipt_per_message(app, graph):
    import_examples(app)
    for text in ("hi", "hello"):
        msg = message("8101", body=text)
        assert post_webhook(app.test_client(), envelope([msg])).status_code == 200
        run_worker(app)
    assert len([r for r in graph.requests if r["body"].get("status") == "read"]) == 2
