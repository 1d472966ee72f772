"""Login throttling: per address and per account, and device cookies."""

from __future__ import annotations

import itertools

import pytest

from sockchat._desk.throttle import (
    Backoff,
    DeviceCookies,
    LoginThrottle,
    ThrottlePolicy,
    address_key,
)


def test_the_waits_double_after_the_free_failures_up_to_a_minute():
    backoff = Backoff(free=5)
    assert [backoff.delay(n) for n in range(12)] == [
        0,
        0,
        0,
        0,
        0,
        1,
        2,
        4,
        8,
        16,
        32,
        60,
    ]
    assert backoff.delay(1000) == 60


def attempt(
    throttle, now, *, right=False, address="192.0.2.7", account="alice", device=None
):
    """One login as the door makes it: refused while it must wait (not
    counted), else judged.  'wait', 'wrong' or 'in'."""
    if throttle.wait(address, account, device, now) > 0:
        return "wait"
    if right:
        throttle.succeeded(address, account, device)
        return "in"
    throttle.failed(address, account, device, now)
    return "wrong"


def test_twenty_wrong_passwords_are_slowed_and_the_right_one_works_after():
    throttle = LoginThrottle()
    now = 0.0
    outcomes = []
    for _ in range(20):
        outcomes.append(attempt(throttle, now))
        now += 0.1  # as fast as a script can
    # Five are judged; past them, each attempt must wait, and those
    # refused while waiting are neither judged nor counted.
    assert outcomes[:5] == ["wrong"] * 5
    assert outcomes.count("wrong") == 6
    assert outcomes.count("wait") == 14
    assert throttle.failures("address", "192.0.2.7") == 6
    # The right password is refused only until the wait is over (2 s
    # after the sixth failure), then it works.
    assert attempt(throttle, now, right=True) == "wait"
    wait = throttle.wait("192.0.2.7", "alice", None, now)
    assert 0 < wait <= 2.0
    assert attempt(throttle, now + wait, right=True) == "in"
    assert throttle.failures("address", "192.0.2.7") == 0


def test_an_attacker_who_waits_each_time_still_gets_slower_and_slower():
    throttle = LoginThrottle()
    now, times = 0.0, []
    for _ in range(12):
        now += throttle.wait("192.0.2.7", "alice", None, now)
        times.append(now)
        assert attempt(throttle, now) == "wrong"
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[4:] == [1, 2, 4, 8, 16, 32, 60]


def test_failures_from_many_addresses_slow_the_account():
    throttle = LoginThrottle()
    for n in range(10):
        assert attempt(throttle, 0.0, address=f"198.51.100.{n}") == "wrong"
    assert attempt(throttle, 0.0, address="203.0.113.1") == "wait"
    # Another account is not slowed by them.
    assert attempt(throttle, 0.0, address="203.0.113.1", account="bob") == "wrong"


def test_the_operators_device_cookie_is_not_slowed_by_an_attack_on_the_account():
    throttle = LoginThrottle()
    cookies = DeviceCookies()
    device = cookies.device(cookies.issue("alice"), "alice")
    assert device is not None
    now = 0.0
    for n in range(200):  # an attack from many addresses, for a long time
        attempt(throttle, now, address=f"198.51.100.{n % 250}")
        now += 0.5
    assert attempt(throttle, now, address="203.0.113.9") == "wait"
    # Alice's own browser, which logged in before, is judged by its own count.
    assert attempt(throttle, now, address="203.0.113.9", device=device, right=True) == (
        "in"
    )


def test_a_device_cookie_is_only_good_for_its_account_and_unchanged():
    cookies = DeviceCookies()
    cookie = cookies.issue("alice")
    assert cookies.device(cookie, "alice") == cookie.split(".")[0]
    assert cookies.device(cookie, "bob") is None
    nonce, mac = cookie.split(".")
    assert cookies.device(f"{nonce}x.{mac}", "alice") is None
    assert cookies.device(f"{nonce}.{mac[:-1]}", "alice") is None
    assert cookies.device("", "alice") is None
    assert cookies.device("a.b.c", "alice") is None
    assert DeviceCookies().device(cookie, "alice") is None  # another key


def test_a_device_that_fails_is_slowed_too():
    throttle = LoginThrottle()
    outcomes = [
        attempt(throttle, 0.0, device="d1", address=f"198.51.100.{n}") for n in range(6)
    ]
    assert outcomes == ["wrong"] * 5 + ["wait"]


def test_success_does_not_give_an_attacker_of_the_account_free_tries():
    throttle = LoginThrottle()
    for n in range(10):
        attempt(throttle, 0.0, address=f"198.51.100.{n}")
    # The operator logs in, from a known device.
    assert (
        attempt(throttle, 0.0, address="203.0.113.9", device="d1", right=True) == "in"
    )
    assert attempt(throttle, 0.0, address="198.51.100.77") == "wait"


def test_failures_are_forgotten_after_a_quiet_quarter_hour():
    throttle = LoginThrottle()
    for _ in range(5):
        attempt(throttle, 0.0)
    assert throttle.wait("192.0.2.7", "alice", None, 0.5) > 0
    assert throttle.wait("192.0.2.7", "alice", None, 15 * 60.0) == 0


def test_the_table_of_addresses_is_bounded():
    throttle = LoginThrottle(ThrottlePolicy(remembered=100))
    for n in range(1000):
        throttle.failed(f"10.0.{n // 250}.{n % 250}", None, None, 0.0)
    assert len(throttle._counts) == 100


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("fe80::1%eth0", "fe80::/64"),
        (None, None),
    ],
)
def test_an_ipv6_address_is_counted_by_its_64(host, key):
    assert address_key(host) == key
