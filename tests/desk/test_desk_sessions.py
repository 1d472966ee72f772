"""Sessions: random 256-bit tokens, kept as digests, that end on time."""

from __future__ import annotations

import base64
import hashlib

from sockchat._desk.sessions import SessionPolicy, SessionStore, key_of

POLICY = SessionPolicy(idle=60.0, absolute=600.0, per_account=2, total=5)


def opened(store, account="alice", now=0.0, stamp="s1"):
    token, session, ended = store.open(account, account.title(), stamp, now)
    return token, session, ended


def test_a_token_is_256_random_bits_in_url_safe_base64():
    store = SessionStore()
    tokens = {opened(store, f"op{i}")[0] for i in range(50)}
    assert len(tokens) == 50
    for token in tokens:
        assert len(token) == 43
        assert len(base64.urlsafe_b64decode(token + "=")) == 32


def test_the_store_keeps_the_tokens_digest_never_the_token():
    store = SessionStore()
    token, session, _ = opened(store)
    assert session.key == hashlib.sha256(token.encode()).hexdigest()
    assert token not in repr(session)
    assert token not in repr(store.__dict__)


def test_a_session_is_found_by_its_token_only():
    store = SessionStore(POLICY)
    token, session, _ = opened(store)
    assert store.find(token, 1.0).account == "alice"
    assert store.find(token[:-1] + ("A" if token[-1] != "A" else "B"), 1.0) is None
    assert store.find(session.key, 1.0) is None  # the digest is no token
    assert store.find("", 1.0) is None
    assert store.find(None, 1.0) is None
    assert store.find("x" * 10_000, 1.0) is None
    assert key_of("not a token!") is None


def test_a_session_idle_too_long_ends():
    store = SessionStore(POLICY)
    token, _, _ = opened(store)
    assert store.find(token, 59.0) is not None  # used: idle time starts again
    assert store.find(token, 118.0) is not None
    assert store.find(token, 178.0) is None
    assert len(store) == 0


def test_a_busy_session_still_ends_at_its_absolute_time():
    store = SessionStore(POLICY)
    token, _, _ = opened(store)
    for now in range(30, 600, 30):
        assert store.find(token, float(now)) is not None
    assert store.find(token, 600.0) is None


def test_logout_ends_the_session_at_once():
    store = SessionStore(POLICY)
    token, session, _ = opened(store)
    assert store.end(session.key) == session
    assert store.find(token, 1.0) is None
    assert store.end(session.key) is None


def test_expire_ends_every_session_past_its_time():
    store = SessionStore(POLICY)
    _old, _, _ = opened(store, "alice", now=0.0)
    new, _, _ = opened(store, "bob", now=50.0)
    gone = store.expire(61.0)
    assert [s.account for s in gone] == ["alice"]
    assert store.find(new, 61.0) is not None


def test_an_account_has_at_most_so_many_sessions_the_oldest_goes():
    store = SessionStore(POLICY)
    first, _, _ = opened(store, now=0.0)
    second, _, _ = opened(store, now=1.0)
    third, _, ended = opened(store, now=2.0)
    assert [s.opened for s in ended] == [0.0]
    assert store.find(first, 3.0) is None
    assert store.find(second, 3.0) is not None
    assert store.find(third, 3.0) is not None


def test_the_desk_has_at_most_so_many_sessions():
    store = SessionStore(POLICY)
    tokens = [opened(store, f"op{i}", now=float(i))[0] for i in range(6)]
    assert len(store) == 5
    assert store.find(tokens[0], 6.0) is None
    assert store.find(tokens[5], 6.0) is not None


def test_a_changed_password_or_a_removed_account_ends_its_sessions():
    store = SessionStore(POLICY)
    alice, _, _ = opened(store, "alice", stamp="old")
    bob, _, _ = opened(store, "bob", stamp="b")
    carol, _, _ = opened(store, "carol", stamp="c")
    stamps = {"alice": "new", "bob": "b"}  # alice's password changed; no carol
    gone = store.stale(stamps.get)
    assert sorted(s.account for s in gone) == ["alice", "carol"]
    assert store.find(bob, 1.0) is not None
    assert store.find(alice, 1.0) is None
    assert store.find(carol, 1.0) is None
