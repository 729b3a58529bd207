"""Locks in Redis with an owner token and a TTL (the mailroom pattern).

Only the owner can extend or release a lock; if its process dies, the lock expires. A holder
that finds its lock gone (expired while it was stuck, or taken by someone else since) gets
``LockLost`` from ``extend`` and must stop before it writes or sends anything more.

The Lua scripts, KEYS/ARGV:
  _RELEASE  KEYS[1] lock key, ARGV[1] token           -> 1 if deleted, 0 if not ours
  _EXTEND   KEYS[1] lock key, ARGV[1] token, ARGV[2] ms -> 1 if extended, 0 if not ours
"""

from __future__ import annotations

import time
import uuid

from redis import Redis

from crm.base import keys
from crm.base.extensions import redis_script

_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_EXTEND = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
           "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0")


class LockLost(RuntimeError):
    """The lock expired or changed hands while we held it: stop before doing more."""


class TokenLock:
    def __init__(self, redis: Redis, key: str, ttl_ms: int):
        self.redis, self.key, self.ttl_ms = redis, key, ttl_ms
        self.token = uuid.uuid4().hex
        self.extended_at = time.monotonic()
        self._release = redis_script(redis, _RELEASE)
        self._extend = redis_script(redis, _EXTEND)

    def acquire(self) -> bool:
        got = bool(self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms))
        self.extended_at = time.monotonic()
        return got

    def extend(self, force: bool = False) -> None:
        """Push the expiry out again (a no-op while less than a sixth of the TTL has passed).

        Raises LockLost when the lock is no longer ours, and also when the TTL ran out since
        the last extension: someone else may have taken it and released it meanwhile.
        """
        now = time.monotonic()
        elapsed_ms = (now - self.extended_at) * 1000
        if elapsed_ms >= self.ttl_ms:
            raise LockLost(f"{self.key}: held {elapsed_ms:.0f} ms without extending, past its {self.ttl_ms} ms TTL")
        if not force and elapsed_ms < self.ttl_ms / 6:
            return
        if not self._extend(keys=[self.key], args=[self.token, self.ttl_ms]):
            raise LockLost(f"{self.key}: no longer ours")
        self.extended_at = now

    def release(self, pipeline=None):
        """Delete the lock if we still own it (queued on ``pipeline`` when one is given)."""
        if pipeline is not None:
            return self._release(keys=[self.key], args=[self.token], client=pipeline)
        return bool(self._release(keys=[self.key], args=[self.token]))

    def __enter__(self) -> bool:
        self.held = self.acquire()
        return self.held

    def __exit__(self, *_exc) -> None:
        if self.held:
            self.release()


class ContactLock(TokenLock):
    """One contact's work runs under this lock: serving the contact, or an operator action.

    ``ContactLock(redis, None)`` is a lock for the next contact off the ready list, taken by the
    script that frees the last one (``crm.replies.wake.finish``), which then calls ``taken``."""

    def __init__(self, redis: Redis, contact_id: int | None, ttl_ms: int = keys.LOCK_TTL_MS):
        super().__init__(redis, keys.contact_lock(contact_id) if contact_id is not None else "", ttl_ms)
        self.contact_id = contact_id

    def taken(self, contact_id: int) -> None:
        """The lock was set for ``contact_id`` with this token just now (by a script)."""
        self.contact_id, self.key = contact_id, keys.contact_lock(contact_id)
        self.extended_at = time.monotonic()
