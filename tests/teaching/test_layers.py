"""One segment, layer by layer (sockchat._teaching.layers): from a packet,
in the tutorial's words; from a socket, saying what it cannot see."""

from __future__ import annotations

from sockchat._core.render import UNSAFE
from sockchat._teaching.layers import (
    APPLICATION,
    DATA_LINK,
    NETWORK,
    TRANSPORT,
    Layers,
    layers_from_packet,
    layers_from_socket,
    render_layers,
)
from sockchat._teaching.packets import (
    Flows,
    Segment,
    TcpFlags,
    build_frame,
    parse_frame,
)
from sockchat._teaching.trace import Address, Side

CLIENT = Address("127.0.0.1", 51234)
SERVER = Address("127.0.0.1", 9527)


def first_data(source, destination, payload=b"hello\n", **kw):
    flows = Flows()
    syn = parse_frame(build_frame(source, destination, flags=TcpFlags.SYN, seq=99))
    assert isinstance(syn, Segment)
    flows.track(syn, 0.0)
    frame = build_frame(
        source,
        destination,
        flags=TcpFlags.PSH | TcpFlags.ACK,
        seq=100,
        ack=7,
        payload=payload,
        **kw,
    )
    segment = parse_frame(frame)
    assert isinstance(segment, Segment)
    return flows.track(segment, 1.0)


def facts(layers: Layers, name: str) -> str:
    (layer,) = [layer for layer in layers.layers if layer.name == name]
    return "\n".join(layer.facts)


def test_the_four_layers_are_the_tutorials_in_order():
    layers = layers_from_packet(first_data(CLIENT, SERVER))
    assert [layer.name.split(" ")[0] for layer in layers.layers] == [
        "数据链路层",
        "网络层",
        "传输层",
        "应用层",
    ]
    assert layers.source == "a captured packet"


def test_a_cards_mac_is_its_vendors_half_and_its_serial_half():
    layers = layers_from_packet(
        first_data(
            Address("10.0.0.1", 51234),
            Address("10.0.0.2", 9527),
            mac_source=bytes.fromhex("001a2b3c4d5e"),
            mac_destination=bytes.fromhex("02aabbccddee"),
        )
    )
    link = facts(layers, DATA_LINK)
    assert (
        "from MAC: 00:1a:2b:3c:4d:5e, 12 hex digits: the first 6 (00:1a:2b) are the "
        "vendor's number (厂商号" in link
    )
    assert "the last 6 (3c:4d:5e) the card's serial number (流水号)" in link
    assert "locally administered" in link  # 02:...: no vendor's number
    assert "loopback" not in link


def test_on_loopback_the_macs_are_zeros_and_the_layer_says_why():
    link = facts(layers_from_packet(first_data(CLIENT, SERVER)), DATA_LINK)
    assert "from MAC: 00:00:00:00:00:00, all zeros" in link
    assert "went over loopback (lo), which is not a network card" in link


def test_the_network_layer_shows_the_addresses_and_the_ttl():
    network = facts(layers_from_packet(first_data(CLIENT, SERVER, ttl=63)), NETWORK)
    assert "IPv4: from 127.0.0.1 to 127.0.0.1 (回环地址, loopback" in network
    assert "TTL 63: each router on the way takes one off" in network
    six = layers_from_packet(first_data(Address("::1", 5000), Address("::1", 9527)))
    assert "hop limit 64: IPv6's TTL" in facts(six, NETWORK)


def test_the_transport_layer_shows_ports_flags_and_both_sequence_numbers():
    transport = facts(layers_from_packet(first_data(CLIENT, SERVER)), TRANSPORT)
    assert "TCP from port 51234 (the client's) to port 9527 (the server's)" in transport
    assert "flags PSH-ACK: ACK says" in transport
    assert "PSH asks the receiver to hand the data to the program now" in transport
    assert "sequence number 1 (relative; 100 as sent)" in transport
    assert "payload 6 bytes" in transport


def test_the_application_layer_shows_the_lines_safely():
    payload = b"one\ntwo\x1b[2J\nhal"
    application = facts(
        layers_from_packet(first_data(CLIENT, SERVER, payload=payload)), APPLICATION
    )
    assert "2 lines of sockchat's line protocol" in application
    assert "'one', 'two\\x1b[2J'" in application
    assert "3 bytes of a line not ended here" in application
    for line in render_layers(
        layers_from_packet(first_data(CLIENT, SERVER, payload=payload))
    ):
        assert UNSAFE.search(line) is None


def test_from_the_socket_nothing_is_invented():
    layers = layers_from_socket(
        Side.SERVER, SERVER, CLIENT, b"hello\n", why="no CAP_NET_RAW"
    )
    assert layers.source == "the server's socket (no packet captured: no CAP_NET_RAW)"
    text = "\n".join(render_layers(layers))
    assert "not seen: a socket never sees the Ethernet header" in text
    assert "TTL: not seen" in text
    assert "flags and sequence numbers: not seen" in text
    assert "00:00" not in text  # no MAC shown
    assert "TTL 64" not in text
    assert "this end 127.0.0.1 (getsockname()), the client's 127.0.0.1" in text
    assert "1 line of sockchat's line protocol, ended by its newline: 'hello'" in text
