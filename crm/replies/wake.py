"""The one way to schedule work for a contact: ``wake(contact_id)``.

Every path that gives a contact something to do (a stored message, an operator's send or
flow start, a retry that is due, a stalled contact found by recovery, an expiry notice, a
football result) calls ``wake`` or ``wake_many``. They own the queue (``high``), the queued
marker and the job id; the job is always ``crm.replies.contact.run_contact``, which takes the
contact's lock and works through its outbox and inbox in order.

At most one contact task is queued or running per contact: the marker
``crm:queued:contact:<id>`` (``SET NX``, ``QUEUED_TTL``) is set here and cleared by the task
when it ends (or finds the contact busy), and the task then looks at the inbox again, so a
message stored while the marker was set is never stranded. The TTL covers a crash between
the marker and the enqueue. A wake ``at`` a later time (a retry's backoff) is scheduled by
RQ's scheduler without the marker: it must not block the wakes that come before it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from rq import Queue
from rq.job import Job

from crm.base import keys
from crm.base.extensions import get_queue, get_redis
from crm.base.models import utcnow

CONTACT_TASK = "crm.replies.contact.run_contact"
CHUNK = 500  # contacts per Redis round trip in wake_many


def wake(contact_id: int, at: datetime | None = None, message_id: int | None = None) -> bool:
    """Schedule the contact's task now (or ``at`` a later UTC time). False: one is already queued."""
    queue = get_queue(keys.HIGH)
    if at is not None:
        delay = (at - utcnow()).total_seconds()
        if delay > 0:
            queue.enqueue_in(timedelta(seconds=delay + 0.05), CONTACT_TASK, contact_id,
                             result_ttl=keys.RESULT_TTL, failure_ttl=keys.FAILURE_TTL,
                             job_timeout=keys.CONTACT_JOB_TIMEOUT, description=f"contact {contact_id} (due)")
            return True
    redis = get_redis()
    marker = keys.queued(contact_id)
    if not redis.set(marker, 1, nx=True, ex=keys.QUEUED_TTL):
        return False
    try:
        queue.enqueue(CONTACT_TASK, contact_id, job_id=keys.contact_job_id(contact_id, message_id),
                      result_ttl=keys.RESULT_TTL, failure_ttl=keys.FAILURE_TTL,
                      job_timeout=keys.CONTACT_JOB_TIMEOUT, description=f"contact {contact_id}")
    except Exception:
        redis.delete(marker)
        raise
    return True


def wake_many(contact_ids: Iterable[int]) -> list[int]:
    """Wake many contacts, ``CHUNK`` at a time; returns the ones really enqueued.

    Each is its own task, serial with that contact's own messages and retried on its own:
    one contact's failure never holds the others back.
    """
    ids = list(dict.fromkeys(contact_ids))
    woken: list[int] = []
    redis, queue = get_redis(), get_queue(keys.HIGH)
    for i in range(0, len(ids), CHUNK):
        chunk = ids[i:i + CHUNK]
        pipe = redis.pipeline(transaction=False)
        for contact_id in chunk:
            pipe.set(keys.queued(contact_id), 1, nx=True, ex=keys.QUEUED_TTL)
        fresh = [cid for cid, ok in zip(chunk, pipe.execute(), strict=True) if ok]
        if not fresh:
            continue
        try:
            queue.enqueue_many([
                Queue.prepare_data(CONTACT_TASK, (cid,), result_ttl=keys.RESULT_TTL, failure_ttl=keys.FAILURE_TTL,
                                   timeout=keys.CONTACT_JOB_TIMEOUT, description=f"contact {cid}")
                for cid in fresh])
        except Exception:
            redis.delete(*[keys.queued(cid) for cid in fresh])
            raise
        woken += fresh
    return woken


# KEYS[1] the queue's list, ARGV[1] RQ's job key prefix -> {job id, its hash as a flat list} or nil
_TAKE = """
local id = redis.call('LPOP', KEYS[1])
if not id then return nil end
return {id, redis.call('HGETALL', ARGV[1] .. id)}
"""


def take_next() -> int | None:
    """Take the next contact task waiting on ``high`` off the queue, for the running task to serve.

    A task that finished early serves the contacts queued behind it (round robin, in queue
    order) instead of paying RQ's per-job bookkeeping for each (RapidPro's mailroom drains a
    fair contact queue the same way). The job taken is consumed: its contact keeps its queued
    marker, which the serving task clears as usual. Anything else at the head of the queue is
    put back and None returned. Should the serving process die, the contact's marker and lock
    expire and recovery wakes it again (the database is the inbox).
    """
    queue = get_queue(keys.HIGH)
    redis = queue.connection
    found = redis.eval(_TAKE, 1, queue.key, Job.redis_job_namespace_prefix)
    if not found:
        return None
    job_id, flat = found[0], found[1]
    job = Job(job_id.decode() if isinstance(job_id, bytes) else job_id, connection=redis)
    try:
        job.restore(dict(zip(flat[::2], flat[1::2], strict=True)))
        ours = job.func_name == CONTACT_TASK and len(job.args) == 1
    except Exception:  # a job this code did not write: leave it to RQ
        ours = False
    if not ours:
        redis.lpush(queue.key, job_id)
        return None
    redis.delete(job.key)
    return int(job.args[0])
