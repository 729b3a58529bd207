"""Owner-token locks against the suite's real redis-server: one owner, expiry, extension, loss."""

from __future__ import annotations

import time
import uuid

import pytest
import redis as redis_lib

from crm.base import keys
from crm.base.locks import ContactLock, LockLost, TokenLock


@pytest.fixture
def r(redis_url):
    client = redis_lib.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def key():
    return f"{keys.PREFIX}test:lock:{uuid.uuid4().hex}"


def test_the_first_acquire_wins_and_the_second_fails(r, key):
    first, second = TokenLock(r, key, 10_000), TokenLock(r, key, 10_000)
    assert first.acquire() is True
    assert second.acquire() is False
    assert r.get(key) == first.token.encode()
    assert 0 < r.pttl(key) <= 10_000


def test_acquiring_again_with_the_same_lock_fails_too(r, key):
    lock = TokenLock(r, key, 10_000)
    assert lock.acquire() is True and lock.acquire() is False


def test_the_owner_releases_and_then_another_can_acquire(r, key):
    first, second = TokenLock(r, key, 10_000), TokenLock(r, key, 10_000)
    first.acquire()
    assert first.release() is True
    assert r.exists(key) == 0
    assert second.acquire() is True


@pytest.mark.parametrize("holder", [
    pytest.param("another lock", id="a lock that never got it releases nothing"),
    pytest.param("a stale owner", id="an owner whose lock expired and was retaken releases nothing"),
])
def test_release_by_a_non_owner_does_nothing(r, key, holder):
    owner, other = TokenLock(r, key, 10_000), TokenLock(r, key, 10_000)
    if holder == "a stale owner":
        other.acquire()
        r.delete(key)  # as if it expired
    owner.acquire()
    assert other.release() is False
    assert r.get(key) == owner.token.encode()


def test_releasing_a_lock_nobody_holds_is_harmless(r, key):
    assert TokenLock(r, key, 10_000).release() is False


def test_extend_pushes_the_expiry_out_again(r, key):
    lock = TokenLock(r, key, 10_000)
    lock.acquire()
    r.pexpire(key, 200)  # about to run out
    lock.extend(force=True)
    assert r.pttl(key) > 5_000 and r.get(key) == lock.token.encode()


def test_extend_early_is_a_no_op_that_keeps_the_lock(r, key):
    lock = TokenLock(r, key, 10_000)
    lock.acquire()
    r.pexpire(key, 5_000)
    lock.extend()  # less than a sixth of the TTL has passed: nothing is sent
    assert r.pttl(key) <= 5_000 and r.get(key) == lock.token.encode()


def test_extend_after_a_sixth_of_the_ttl_talks_to_redis(r, key):
    lock = TokenLock(r, key, 1_200)
    lock.acquire()
    time.sleep(0.21)  # past 1200 / 6 = 200 ms, a second short of the TTL
    r.pexpire(key, 100)
    lock.extend()
    assert r.pttl(key) > 150


def _deleted(r, key):
    r.delete(key)


def _taken(r, key):
    r.set(key, "someone-else", px=10_000)


@pytest.mark.parametrize("what_happened, force", [
    pytest.param(_deleted, True, id="the key was deleted: a forced extend raises"),
    pytest.param(_taken, True, id="another token took the key: a forced extend raises"),
    pytest.param(_deleted, False, id="the key was deleted: an extend past a sixth of the ttl raises"),
    pytest.param(_taken, False, id="another token took the key: an extend past a sixth of the ttl raises"),
])
def test_extend_raises_lock_lost_when_the_lock_is_no_longer_ours(r, key, what_happened, force):
    lock = TokenLock(r, key, 1_200)
    lock.acquire()
    what_happened(r, key)
    if not force:
        time.sleep(0.21)  # past 1200 / 6 = 200 ms, a second short of the TTL
    with pytest.raises(LockLost, match="no longer ours"):
        lock.extend(force=force)
    if what_happened is _taken:
        assert r.get(key) == b"someone-else"  # the new owner's lock is left alone


@pytest.mark.parametrize("retaken", [
    pytest.param(False, id="the ttl ran out and nobody took it: extend raises"),
    pytest.param(True, id="the ttl ran out and another took it: extend raises and leaves it alone"),
])
def test_extend_after_the_ttl_elapsed_raises_lock_lost(r, key, retaken):
    lock, other = TokenLock(r, key, 50), TokenLock(r, key, 10_000)
    assert lock.acquire()
    time.sleep(0.08)
    if retaken:
        assert other.acquire()
    with pytest.raises(LockLost, match="past its 50 ms TTL"):
        lock.extend(force=True)
    assert r.get(key) == (other.token.encode() if retaken else None)


def test_the_ttl_is_checked_even_when_the_key_is_still_ours(r, key):
    """A holder stuck past its TTL may have lost the lock in between: it must stop anyway."""
    lock = TokenLock(r, key, 50)
    lock.acquire()
    time.sleep(0.08)
    r.set(key, lock.token, px=10_000)  # it came back to us, but we cannot know that
    with pytest.raises(LockLost):
        lock.extend()


@pytest.mark.parametrize("ours, deleted", [
    pytest.param(True, 1, id="the owner releases in a pipeline"),
    pytest.param(False, 0, id="a non-owner releasing in a pipeline deletes nothing"),
])
def test_release_in_a_pipeline(r, key, ours, deleted):
    owner, other = TokenLock(r, key, 10_000), TokenLock(r, key, 10_000)
    owner.acquire()
    marker = key + ":marker"
    r.set(marker, 1)
    pipe = r.pipeline(transaction=False)
    (owner if ours else other).release(pipe)
    pipe.delete(marker)
    assert r.exists(key) == 1  # nothing happens before execute
    assert pipe.execute() == [deleted, 1]
    assert r.exists(key) == (0 if ours else 1) and r.exists(marker) == 0


def test_the_context_manager_releases_only_what_it_got(r, key):
    outer = TokenLock(r, key, 10_000)
    with outer as held:
        assert held is True
        with TokenLock(r, key, 10_000) as inner_held:
            assert inner_held is False
        assert r.get(key) == outer.token.encode()  # the loser did not release the holder's lock
    assert r.exists(key) == 0


def test_a_contact_lock_is_the_contacts_key_with_the_default_ttl(r):
    contact_id = int(uuid.uuid4().int % 10**9)
    lock = ContactLock(r, contact_id)
    assert lock.key == keys.contact_lock(contact_id) and lock.ttl_ms == keys.LOCK_TTL_MS
    assert lock.acquire() and not ContactLock(r, contact_id).acquire()
    assert keys.LOCK_TTL_MS - 5_000 < r.pttl(lock.key) <= keys.LOCK_TTL_MS
    assert ContactLock(r, contact_id + 1).acquire()  # another contact is not blocked
    lock.release()
    r.delete(keys.contact_lock(contact_id + 1))


def test_tokens_are_unique_per_lock(r, key):
    assert len({TokenLock(r, key, 1_000).token for _ in range(100)}) == 100
