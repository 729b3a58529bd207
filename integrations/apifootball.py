"""APIFootball v3 client (https://apifootball.com/documentation/).

Every call is ``GET {APIFOOTBALL_URL}/?action=...&APIkey=...``. The client

- shares one rate limit between all processes through Redis (each call reserves
  the next free slot, ``60 / APIFOOTBALL_RATE_PER_MINUTE`` seconds apart),
- retries 429, 5xx, timeouts and connection errors with exponential backoff
  (``Retry-After`` is honoured), and gives up after ``max_attempts``,
- turns APIFootball's "no data" answer (HTTP 200 ``{"error": 404, ...}``) into an
  empty list, and any other error payload into ``APIFootballError``,
- never puts the API key in an exception or a log line (the key travels in the
  query string, so request URLs are never shown).

Requests ask for times in ``timezone`` (UTC by default); ``football.parse``
turns them into naive UTC datetimes.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from datetime import date

import requests
from redis import Redis

from integrations import http

log = logging.getLogger(__name__)

RATE_KEY = "football:apifootball:next-slot"
# Reserve the next slot: slot = max(now, next); next = slot + interval; return slot - now (ms).
_RESERVE = """
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local nxt = tonumber(redis.call('get', KEYS[1]) or '0')
local slot = math.max(now, nxt)
redis.call('set', KEYS[1], slot + interval, 'px', math.max(1000, slot + interval - now + 1000))
return slot - now
"""


class APIFootballError(Exception):
    """The API refused or failed; ``retryable`` says whether a later sync may succeed."""

    def __init__(self, message: str, status: int | None = None, retryable: bool = False):
        super().__init__(message)
        self.status, self.retryable = status, retryable


class RateLimiter:
    """A call-spacing limit shared by every process that uses the same Redis."""

    def __init__(self, redis: Redis, per_minute: int, key: str = RATE_KEY,
                 clock: Callable[[], float] = time.time):
        self.redis, self.key, self.clock = redis, key, clock
        self.interval_ms = 60_000 / max(1, per_minute)
        self._reserve = redis.register_script(_RESERVE)

    def reserve(self) -> float:
        """Seconds to wait before the caller may send its request."""
        now_ms = int(self.clock() * 1000)
        wait_ms = self._reserve(keys=[self.key], args=[now_ms, self.interval_ms])
        return max(0.0, float(wait_ms) / 1000)


class APIFootballClient:
    def __init__(self, base_url: str, api_key: str, limiter: RateLimiter | None = None, *,
                 timezone: str = "UTC", timeout: tuple[float, float] = (3.05, 30.0), max_attempts: int = 4,
                 backoff: float = 1.0, sleep: Callable[[float], None] = time.sleep,
                 session: requests.Session | None = None, on_call: Callable[[str, str, float], None] | None = None):
        self.base_url = base_url.rstrip("/") + "/"
        self.api_key = api_key
        self.limiter = limiter
        self.timezone = timezone
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.sleep = sleep
        self.session = session or requests.Session()
        self.on_call = on_call  # (action, outcome, seconds) for metrics
        self.calls = 0  # HTTP requests made, retries included

    @classmethod
    def from_settings(cls, settings, limiter: RateLimiter | None, **kwargs) -> APIFootballClient:
        if not settings.apifootball_key:
            raise APIFootballError("APIFOOTBALL_KEY is not set")
        return cls(settings.apifootball_url, settings.apifootball_key, limiter, **kwargs)

    # -- the three actions the sync uses -------------------------------------------------
    def leagues(self) -> list[dict]:
        return self.call("get_leagues")

    def events(self, start: date, end: date, league_id: str | None = None, live: bool = False) -> list[dict]:
        params = {"from": start.isoformat(), "to": end.isoformat(), "timezone": self.timezone}
        if league_id:
            params["league_id"] = league_id
        if live:
            params["match_live"] = "1"
        return self.call("get_events", **params)

    def odds(self, start: date | None = None, end: date | None = None, match_id: str | None = None) -> list[dict]:
        if match_id:
            return self.call("get_odds", match_id=match_id)
        if start is None or end is None:
            raise ValueError("odds() needs a date window or a match_id")
        return self.call("get_odds", **{"from": start.isoformat(), "to": end.isoformat()})

    # -- transport -----------------------------------------------------------------------
    def call(self, action: str, **params) -> list[dict]:
        query = {"action": action, **params, "APIkey": self.api_key}
        last: APIFootballError | None = None
        for attempt in range(1, self.max_attempts + 1):
            if self.limiter is not None:
                wait = self.limiter.reserve()
                if wait > 0:
                    self.sleep(wait)
            started = time.perf_counter()
            retry_after = None
            try:
                self.calls += 1
                response = self.session.get(self.base_url, params=query, timeout=self.timeout)
            except requests.Timeout:
                last = APIFootballError(f"{action}: timed out", retryable=True)
            except requests.ConnectionError:
                last = APIFootballError(f"{action}: connection failed", retryable=True)
            else:
                if response.status_code == 429 or response.status_code >= 500:
                    last = APIFootballError(f"{action}: HTTP {response.status_code}", response.status_code, True)
                    retry_after = http.retry_after(response)
                elif response.status_code != 200:
                    last = APIFootballError(f"{action}: HTTP {response.status_code}", response.status_code)
                else:
                    self._record(action, "ok", started)
                    return self._payload(action, response)
            self._record(action, "retry" if last.retryable else "error", started)
            if not last.retryable or attempt == self.max_attempts:
                break
            delay = retry_after if retry_after is not None else self.backoff * 2 ** (attempt - 1)
            delay = min(60.0, delay) * (1 + random.random() * 0.25)
            log.warning("apifootball %s failed (%s), retrying in %.1f s", action, last, delay,
                        extra={"event": "football.api_retry", "attempt": attempt})
            self.sleep(delay)
        raise last

    def _record(self, action: str, outcome: str, started: float) -> None:
        if self.on_call is not None:
            self.on_call(action, outcome, time.perf_counter() - started)

    @staticmethod
    def _payload(action: str, response: requests.Response) -> list[dict]:
        try:
            data = response.json()
        except ValueError:
            raise APIFootballError(f"{action}: the answer is not JSON", 200, retryable=True) from None
        if isinstance(data, dict) and "error" in data:
            code, message = data.get("error"), str(data.get("message", ""))[:200]
            if str(code) == "404":  # "No event found (please check your plan)!" and similar: no data
                return []
            raise APIFootballError(f"{action}: error {code}: {message}", 200)
        if isinstance(data, dict):  # some actions answer one object keyed by id
            return [v for v in data.values() if isinstance(v, dict)]
        if not isinstance(data, list):
            raise APIFootballError(f"{action}: unexpected answer of type {type(data).__name__}", 200)
        return [row for row in data if isinstance(row, dict)]

