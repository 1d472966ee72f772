"""Admission: the per-address cap spares loopback, and refusals say which
option to raise."""

from __future__ import annotations

import pytest

from sockchat import EchoResponder
from sockchat._core.limits import AccessRules, Admission, parse_networks
from sockchat.testing import MemoryServer

LOOPBACK = ["127.0.0.1", "127.3.4.5", "::1", "::ffff:127.0.0.1"]


@pytest.mark.parametrize("host", LOOPBACK)
def test_loopback_peers_do_not_count_against_max_per_ip(host):
    admission = Admission(max_per_ip=2)
    for _ in range(50):
        assert admission.admit(host) is None
    assert admission.total == 50
    for _ in range(50):
        admission.release(host)
    assert admission.total == 0


def test_loopback_still_counts_against_max_clients():
    admission = Admission(max_clients=3, max_per_ip=1)
    assert [admission.admit("127.0.0.1") for _ in range(3)] == [None] * 3
    refusal = admission.consider("127.0.0.1")
    assert refusal is not None
    assert refusal.notice.code == "busy"
    assert refusal.option == "--max-clients"
    assert "raise --max-clients" in refusal.why


def test_cap_loopback_counts_loopback_like_any_address():
    admission = Admission(max_per_ip=2, cap_loopback=True)
    assert admission.admit("127.0.0.1") is None
    assert admission.admit("::ffff:127.0.0.1") is None
    refusal = admission.consider("127.0.0.1")
    assert refusal is not None
    assert refusal.option == "--max-per-ip"
    admission.release("127.0.0.1")
    assert admission.admit("127.0.0.1") is None


def test_other_addresses_are_capped_and_the_refusal_names_the_option():
    admission = Admission(max_per_ip=2)
    assert admission.admit("10.1.2.3") is None
    assert admission.admit("10.1.2.3") is None
    refusal = admission.consider("10.1.2.3")
    assert refusal is not None
    assert refusal.notice.code == "busy"
    assert "--max-per-ip" not in refusal.notice.text  # the client hears no options
    assert refusal.option == "--max-per-ip"
    assert refusal.why == (
        "10.1.2.3 already has 2 connection(s), the most --max-per-ip 2 allows; "
        "raise --max-per-ip (0: no limit)"
    )
    assert admission.admit("10.1.2.4") is None  # another address is not capped
    assert admission.admit("10.1.2.3") == refusal.notice


def test_a_denied_address_names_allow_and_deny():
    admission = Admission(rules=AccessRules(deny=parse_networks(["10.0.0.0/8"])))
    refusal = admission.consider("10.9.9.9")
    assert refusal is not None
    assert refusal.notice.code == "denied"
    assert refusal.option == "--allow/--deny"


def test_fifty_local_clients_at_once_are_all_welcome_in_memory():
    server = MemoryServer(EchoResponder(), admission=Admission(max_per_ip=20))
    conversations = [server.connect() for _ in range(50)]
    assert [server.say(c, f"hi {i}") for i, c in enumerate(conversations)] == [
        f"hi {i}" for i in range(50)
    ]
