"""Small HTTP helpers shared by the clients of this layer (requests, no Flask, no database)."""

from __future__ import annotations

import requests


def retry_after(response: requests.Response) -> float | None:
    """Seconds a ``Retry-After`` header asks for (its seconds form), or None."""
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None
