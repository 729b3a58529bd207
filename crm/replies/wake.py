"""The one way to schedule work for a contact: ``wake(contact_id)``.

Every path that gives a contact something to do (a stored message, an operator's send or
flow start, a retry that is due, a stalled contact found by recovery, an expiry notice, a
football result) calls ``wake`` or ``wake_many``. They own the ready list and the queued
marker: a woken contact's id goes to the back of ``crm:contacts:ready``, which the reply
workers pop together with RQ's queues (``crm.app.worker``) and serve with
``crm.replies.contact.serve_contact``: the contact's lock, its outbox and one turn of its inbox.
A reply thread that has served a contact takes the next one off the list in the same round trip
that frees the last (``finish`` with a ``next_lock``): under load, one round trip per contact
where the BLPOP, the lock's SET and the release were three.
This is RapidPro mailroom's fair contact queue; a wake costs one Redis round trip and a turn
no RQ job (measured with ``bench/profile_turn.py``: RQ's enqueue was a fifth of the
webhook's CPU, and its per-job bookkeeping 49 Redis commands and about 40 % of a reply
worker's CPU per turn).

At most one entry per contact is on the list or being served: the marker
``crm:queued:contact:<id>`` (``SET NX``, ``QUEUED_TTL``) is set with the push and cleared
when the contact has been served (or found busy); the server then looks at the inbox again,
so a message stored while the marker was set is never stranded. Should a worker die between
the pop and the turn, the marker expires and recovery (``crm.replies.recovery``) wakes the
contact again: the database is the inbox.

A wake ``at`` a later time (a retry's backoff) is an RQ job scheduled by RQ's scheduler
(``run_contact``), without the marker: it must not block the wakes that come before it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta

from crm.base import keys
from crm.base.extensions import get_queue, get_redis, redis_script
from crm.base.locks import ContactLock
from crm.base.models import utcnow

log = logging.getLogger(__name__)

CONTACT_TASK = "crm.replies.contact.run_contact"
CHUNK = 500  # contacts per Redis round trip in wake_many


# KEYS[1] the ready list, then per contact its queued marker and its rewake flag; ARGV[1] the
# TTL of marker and flag, ARGV[2..] the contact ids -> the ids pushed (those whose marker was
# not set yet). A contact already queued or being served gets the rewake flag instead: its
# server looks again.
_WAKE = """
local pushed = {}
for j = 2, #ARGV do
  local id = ARGV[j]
  if redis.call('SET', KEYS[2 * j - 2], 1, 'NX', 'EX', ARGV[1]) then
    redis.call('RPUSH', KEYS[1], id)
    pushed[#pushed + 1] = id
  else
    redis.call('SET', KEYS[2 * j - 1], 1, 'EX', ARGV[1])
  end
end
return pushed
"""

# KEYS[1] the contact's lock, KEYS[2] its queued marker, KEYS[3] its rewake flag, KEYS[4] the
# ready list; ARGV[1] the lock's token ('' when the lock was not ours: the contact was busy),
# ARGV[2] the marker's and the flag's TTL, ARGV[3] whether the contact goes back on the ready
# list ('always', 'if woken', 'never'), ARGV[4] its id; ARGV[5] the token of a lock for the next
# contact off the ready list ('' to take none), ARGV[6] that lock's TTL in ms, ARGV[7..9] the
# prefixes of a contact's lock, marker and flag keys -> {1 when the contact was woken while it
# was queued or served (look at its inbox again), else 0; the next entry taken off the ready list
# and 1 when its lock was set with ARGV[5] (0: not a contact id)}. A next contact found locked is
# left to its holder, as serve_contact does (marker cleared, flag set), and the next one tried.
_FINISH = """
local function left_to_holder(marker, flag)
  redis.call('DEL', marker)
  redis.call('SET', flag, 1, 'EX', ARGV[2])
end
local woken = 0
if ARGV[1] == '' then
  left_to_holder(KEYS[2], KEYS[3])
else
  if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
  woken = redis.call('DEL', KEYS[3])
  if ARGV[3] == 'always' or (ARGV[3] == 'if woken' and woken == 1) then
    redis.call('SET', KEYS[2], 1, 'EX', ARGV[2])
    redis.call('RPUSH', KEYS[4], ARGV[4])
  else
    redis.call('DEL', KEYS[2])
  end
end
if ARGV[5] == '' then return {woken} end
for _ = 1, 10 do
  local item = redis.call('LPOP', KEYS[4])
  if not item then break end
  local n = tonumber(item)
  if not n or n < 0 or n ~= math.floor(n) then return {woken, item, 0} end
  local id = string.format('%d', n)
  if redis.call('SET', ARGV[7] .. id, ARGV[5], 'NX', 'PX', ARGV[6]) then return {woken, id, 1} end
  left_to_holder(ARGV[8] .. id, ARGV[9] .. id)
end
return {woken}
"""
ALWAYS, IF_WOKEN, NEVER = "always", "if woken", "never"


def _push(redis, contact_ids: list[int]) -> list[int]:
    script = redis_script(redis, _WAKE)  # EVALSHA; the script is loaded when Redis lacks it
    contact_keys = [k for c in contact_ids for k in (keys.queued(c), keys.rewake(c))]
    pushed = script(keys=[keys.READY, *contact_keys], args=[keys.QUEUED_TTL, *contact_ids])
    return [int(c) for c in pushed]


def finish(contact_id: int, lock_token: str | None, requeue: str = NEVER,
           next_lock: ContactLock | None = None) -> bool:
    """The contact has been served (``lock_token``: the lock it was served under) or found busy
    (None: the lock holder must look again). Releases the lock if still ours and the queued
    marker, in one round trip; True when a wake came meanwhile, so the inbox must be looked at.

    ``requeue``: the served contact goes straight to the back of the ready list, its marker kept,
    ``ALWAYS`` or only ``IF_WOKEN``, in the same round trip (a separate ``wake`` was one more:
    bench/profile_turn.py --show-redis).

    ``next_lock`` (a ``ContactLock`` for no contact yet): the same round trip also pops the next
    contact off the ready list and takes its lock; ``next_lock.contact_id`` then says which (None
    when the list was empty). A reply thread goes on with it without a BLPOP and a SET of its own.
    """
    script = redis_script(get_redis(), _FINISH)
    reply = script(keys=[keys.contact_lock(contact_id), keys.queued(contact_id), keys.rewake(contact_id),
                         keys.READY],
                   args=[lock_token or "", keys.QUEUED_TTL, requeue, contact_id,
                         next_lock.token if next_lock is not None else "",
                         next_lock.ttl_ms if next_lock is not None else 0,
                         keys.CONTACT_LOCK_PREFIX, keys.QUEUED_PREFIX, keys.REWAKE_PREFIX])
    if next_lock is not None and len(reply) == 3:
        if reply[2]:
            next_lock.taken(int(reply[1]))
        else:
            _dropped(reply[1])
    return bool(reply[0])


def hand_back(lock: ContactLock) -> None:
    """A contact taken with ``finish``'s ``next_lock`` that will not be served now (its server
    stops): its lock released and its id back at the front of the ready list (its queued marker
    is still set), in one round trip."""
    pipe = lock.redis.pipeline(transaction=True)
    lock.release(pipe)
    pipe.lpush(keys.READY, lock.contact_id)
    pipe.execute()


def ready_contact(item: bytes) -> int | None:
    """The contact id an entry of the ready list holds; anything else is logged and dropped."""
    try:
        return int(item)
    except ValueError:
        _dropped(item)
        return None


def _dropped(item: bytes) -> None:
    log.error("ready list held %r, not a contact id; dropped", item[:100], extra={"event": "worker.bad_ready_item"})


def wake(contact_id: int, at: datetime | None = None) -> bool:
    """Put the contact at the back of the ready list now (or schedule it ``at`` a later UTC time).
    False: it is already there (or being served, and the server looks at its inbox again)."""
    if at is not None:
        delay = (at - utcnow()).total_seconds()
        if delay > 0:
            get_queue(keys.HIGH).enqueue_in(
                timedelta(seconds=delay + 0.05), CONTACT_TASK, contact_id, result_ttl=keys.RESULT_TTL,
                failure_ttl=keys.FAILURE_TTL, job_timeout=keys.CONTACT_JOB_TIMEOUT,
                description=f"contact {contact_id} (due)")
            return True
    return bool(_push(get_redis(), [contact_id]))


def wake_many(contact_ids: Iterable[int]) -> list[int]:
    """Wake many contacts, ``CHUNK`` per round trip; returns the ones really pushed.

    Each is its own entry, served in turn with its own messages and retried on its own: one
    contact's failure never holds the others back.
    """
    ids = list(dict.fromkeys(contact_ids))
    redis = get_redis()
    woken: list[int] = []
    for i in range(0, len(ids), CHUNK):
        woken += _push(redis, ids[i:i + CHUNK])
    return woken


def pending(redis=None) -> int:
    """Contacts on the ready list (waiting for a reply worker)."""
    return int((redis or get_redis()).llen(keys.READY))
