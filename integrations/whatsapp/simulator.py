"""A stand-in for ``WhatsAppClient`` that sends nothing anywhere (the flow simulator's sink).

Messages to simulator contacts (``contacts.is_test``) are delivered by the real delivery
code, in order, with the real consent and 24-hour window checks; only the last hop differs:
this client accepts every message at once with a ``sim.`` message id and never opens a
connection. The rows it "sends" stay in the database, where the simulator page reads them.
"""

from __future__ import annotations

import uuid

from integrations.whatsapp.client import SendResult


class SimulatorClient:
    token = None  # no access token, nothing to call

    def send(self, phone_number_id: str, to: str | None, message: dict, callback_id: str | None = None,
             user_id: str | None = None) -> SendResult:
        # unique like Meta's ids: messages are unique on (phone_number_id, wa_message_id)
        return SendResult(ok=True, http_status=200, wa_message_id=f"sim.{uuid.uuid4().hex}")

    def mark_read(self, phone_number_id: str, wa_message_id: str, typing: bool = True) -> SendResult:
        return SendResult(ok=True, http_status=200)


SIMULATOR_CLIENT = SimulatorClient()
