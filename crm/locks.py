"""Per-contact lock in Redis: an owner token and a TTL (the mailroom pattern).

Only the owner can extend or release it; if its worker dies, it expires.
"""

from __future__ import annotations

import time
import uuid

from redis import Redis

_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_EXTEND = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
           "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0")


class ContactLock:
    def __init__(self, redis: Redis, contact_id: int, ttl_ms: int = 60_000):
        self.redis, self.ttl_ms = redis, ttl_ms
        self.key = f"crm:lock:contact:{contact_id}"
        self.token = uuid.uuid4().hex
        self.extended_at = time.monotonic()
        self._release = redis.register_script(_RELEASE)
        self._extend = redis.register_script(_EXTEND)

    def acquire(self) -> bool:
        got = bool(self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms))
        self.extended_at = time.monotonic()
        return got

    def extend(self, force: bool = False) -> bool:
        """Push the expiry out again; a no-op while less than a sixth of the TTL has passed."""
        now = time.monotonic()
        if not force and (now - self.extended_at) * 1000 < self.ttl_ms / 6:
            return True
        self.extended_at = now
        return bool(self._extend(keys=[self.key], args=[self.token, self.ttl_ms]))

    def release(self, pipeline=None):
        """Delete the lock if we still own it (queued on ``pipeline`` when one is given)."""
        if pipeline is not None:
            return self._release(keys=[self.key], args=[self.token], client=pipeline)
        return bool(self._release(keys=[self.key], args=[self.token]))
