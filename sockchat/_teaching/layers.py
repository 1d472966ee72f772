"""One segment, layer by layer, in the tutorial's words.

The tutorial teaches five layers and asks the learner to know four of them
(it leaves the physical one to the wire): 数据链路层 (the data link layer:
Ethernet, and the MAC address of each card, 12 hex digits, "前6位:厂商号
后6位:流水号": the vendor's number, then the card's serial number), 网络层
(the network layer: IP addresses, and the TTL), 传输层 (the transport
layer: TCP's ports, flags and sequence numbers) and 应用层 (the application
layer: here, sockchat's line).

``layers_from_packet`` shows them for a captured segment (the first that
carried data, say).  ``layers_from_socket`` does what it can without a
packet, and says what a socket cannot see (the MAC addresses, the TTL, the
flags, the sequence numbers) instead of inventing it.  ``render_layers``
gives the lines, every piece of peer text through ``safe_text``.  No I/O.
"""

from __future__ import annotations

import ipaddress

from attrs import frozen

from sockchat._core.render import safe_text
from sockchat._teaching.packets import (
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    IPv4,
    TcpFlags,
    Tracked,
    flag_names,
    mac_text,
)
from sockchat._teaching.trace import Address, Side

__all__ = [
    "APPLICATION",
    "APPLICATION_WEB",
    "DATA_LINK",
    "NETWORK",
    "TRANSPORT",
    "Layer",
    "Layers",
    "layers_from_packet",
    "layers_from_socket",
    "render_layers",
]

DATA_LINK = "数据链路层 (data link layer: Ethernet)"
NETWORK = "网络层 (network layer: IP)"
TRANSPORT = "传输层 (transport layer: TCP)"
APPLICATION = "应用层 (application layer: sockchat's lines)"
#: The web door's connections: HTTP first, then WebSocket frames.
APPLICATION_WEB = "应用层 (application layer: HTTP, then WebSocket)"
#: Bytes of the payload shown.
SHOWN = 64
#: What each TCP flag asks for, in a few words.
FLAG_MEANING = {
    TcpFlags.SYN: "SYN opens a connection and gives the first sequence number",
    TcpFlags.ACK: "ACK says the acknowledgement number is valid",
    TcpFlags.PSH: "PSH asks the receiver to hand the data to the program now",
    TcpFlags.FIN: "FIN says the sender will send nothing more",
    TcpFlags.RST: "RST resets (abandons) the connection",
    TcpFlags.URG: "URG marks urgent data",
    TcpFlags.ECE: "ECE echoes a congestion mark (ECN)",
    TcpFlags.CWR: "CWR says the sender slowed down (ECN)",
}


@frozen
class Layer:
    name: str
    facts: tuple[str, ...]


@frozen
class Layers:
    """The four layers of one segment, and where they were seen."""

    source: str
    layers: tuple[Layer, ...]


def _mac(mac: bytes, whose: str) -> str:
    text = mac_text(mac)
    if not any(mac):
        return f"{whose}: {text}, all zeros"
    oui, serial = text[:8], text[9:]
    if mac == b"\xff" * 6:
        return f"{whose}: {text}, broadcast: every card on the link takes it"
    said = (
        f"{whose}: {text}, 12 hex digits: the first 6 ({oui}) are the vendor's "
        f"number (厂商号, the OUI the IEEE gave the card's maker), the last 6 "
        f"({serial}) the card's serial number (流水号)"
    )
    if mac[0] & 0x02:
        said += (
            "; but the second-lowest bit of its first byte is set: a locally "
            "administered address, chosen by software (a virtual card, a "
            "container), so its first half names no vendor"
        )
    if mac[0] & 0x01:
        said += "; its lowest first bit is set: a multicast address"
    return said


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _payload_facts(
    data: bytes, size: int, *, framing_raw: bool = False, web: bool = False
) -> list[str]:
    shown = repr(data[:SHOWN]) + ("..." if size > SHOWN else "")
    facts = [f"the payload: {size} byte{'' if size == 1 else 's'}, {shown}"]
    if len(data) < size:
        facts.append(f"(only the first {len(data)} bytes were kept)")
    if web:
        first = data.split(b"\r\n", 1)[0].decode("latin-1")
        if first.startswith(("GET /", "HTTP/")):
            facts.append(
                f"HTTP: its first line is {first!r}; the WebSocket upgrade is an "
                "HTTP request and its 101 answer, and after them the same "
                "connection carries WebSocket frames"
            )
        else:
            facts.append(
                "a WebSocket frame (or part of one): a short header, then the "
                "message, masked if the browser sent it"
            )
        return facts
    if framing_raw:
        facts.append("raw framing: these bytes are one message, as one read")
        return facts
    whole = data[:size]
    lines = whole.split(b"\n")
    ended, rest = lines[:-1], lines[-1]
    if ended:
        texts = ", ".join(
            repr(line.decode("utf-8", "replace").removesuffix("\r"))
            for line in ended[:8]
        )
        more = f" and {len(ended) - 8} more" if len(ended) > 8 else ""
        count = "1 line" if len(ended) == 1 else f"{len(ended)} lines"
        each = "ended by its newline" if len(ended) == 1 else "each ended by a newline"
        facts.append(f"{count} of sockchat's line protocol, {each}: {texts}{more}")
    if rest and len(data) >= size:
        facts.append(
            f"{len(rest)} bytes of a line not ended here: its end comes in a later "
            "segment"
        )
    return facts


def layers_from_packet(
    packet: Tracked, *, framing_raw: bool = False, web: bool = False
) -> Layers:
    """The layers of a captured segment (*web*: of the web door's port,
    where HTTP comes first, then WebSocket frames)."""
    segment = packet.segment
    link, ip, tcp = segment.link, segment.ip, segment.tcp
    kind = {ETHERTYPE_IPV4: "IPv4", ETHERTYPE_IPV6: "IPv6"}.get(
        link.ethertype, f"0x{link.ethertype:04x}"
    )
    data_link = [
        f"an Ethernet II frame of type 0x{link.ethertype:04x} ({kind})",
        _mac(link.source, "from MAC"),
        _mac(link.destination, "to MAC"),
    ]
    loop = _is_loopback(ip.source) and _is_loopback(ip.destination)
    if not any(link.source) and not any(link.destination) and loop:
        data_link.append(
            "both are zeros because this frame went over loopback (lo), which is "
            "not a network card: it has no MAC address of its own, and since the "
            "frame never goes on a wire, the kernel fills its Ethernet header "
            "with zeros"
        )
    version = f"IPv{ip.version}"
    network = [
        f"{version}: from {ip.source} to {ip.destination}"
        + (" (回环地址, loopback: the packet never left this machine)" if loop else ""),
    ]
    if isinstance(ip, IPv4):
        network.append(
            f"TTL {ip.ttl}: each router on the way takes one off, and at 0 the "
            "packet is dropped; 64 is Linux's default (net.ipv4.ip_default_ttl)"
        )
        network.append(
            f"header {ip.header_length} bytes, {ip.total_length} bytes in all"
            + ("; Don't Fragment is set" if ip.dont_fragment else "")
        )
    else:
        network.append(
            f"hop limit {ip.hop_limit}: IPv6's TTL; each router takes one off, and "
            "at 0 the packet is dropped"
        )
        network.append(f"header {ip.header_length} bytes, payload {ip.payload_length}")
    sender, receiver = packet.sender.value, packet.sender.other.value
    transport = [
        f"TCP from port {tcp.source_port} (the {sender}'s) to port "
        f"{tcp.destination_port} (the {receiver}'s)",
        f"flags {flag_names(tcp.flags)}: "
        + "; ".join(FLAG_MEANING[f] for f in FLAG_MEANING if f in tcp.flags),
        f"sequence number {packet.relative_seq} (relative; {tcp.seq} as sent): "
        "the number of this segment's first byte, counted from the SYN",
    ]
    if packet.relative_ack is not None:
        transport.append(
            f"acknowledgement number {packet.relative_ack} (relative; {tcp.ack} as "
            f"sent): the next byte the {sender} expects from the {receiver}"
        )
    transport.append(
        f"window {tcp.window}: how much more the {sender} can take (as sent; a "
        "window scale agreed in the SYNs multiplies it)"
    )
    options = tcp.options.describe()
    transport.append(
        f"header {tcp.header_length} bytes"
        + (f" (options: {options})" if options else "")
        + f", payload {segment.payload_length} bytes"
    )
    return Layers(
        "a captured packet",
        (
            Layer(DATA_LINK, tuple(data_link)),
            Layer(NETWORK, tuple(network)),
            Layer(TRANSPORT, tuple(transport)),
            Layer(
                APPLICATION_WEB if web else APPLICATION,
                tuple(
                    _payload_facts(
                        segment.payload,
                        segment.payload_length,
                        framing_raw=framing_raw,
                        web=web,
                    )
                ),
            ),
        ),
    )


def layers_from_socket(
    side: Side,
    local: Address,
    remote: Address,
    data: bytes,
    *,
    why: str = "the capture was off",
    framing_raw: bool = False,
    web: bool = False,
) -> Layers:
    """The layers as the socket of *side* shows them, for the bytes of one
    read (*data*): no packet was captured, for the reason *why*.  *web*:
    *data* is a WebSocket message, as the library handed it over."""
    other = side.other.value
    loop = _is_loopback(local.host) and _is_loopback(remote.host)
    return Layers(
        f"the {side.value}'s socket (no packet captured: {why})",
        (
            Layer(
                DATA_LINK,
                (
                    "not seen: a socket never sees the Ethernet header, which the "
                    "kernel takes off before the bytes reach the program, so there "
                    "are no MAC addresses to show",
                ),
            ),
            Layer(
                NETWORK,
                (
                    f"this end {local.host} (getsockname()), the {other}'s "
                    f"{remote.host} (getpeername())"
                    + (" (回环地址, loopback: this machine)" if loop else ""),
                    "TTL: not seen: a TCP socket does not report the TTL of what "
                    "it receives",
                ),
            ),
            Layer(
                TRANSPORT,
                (
                    f"TCP, this end's port {local.port}, the {other}'s {remote.port}",
                    "flags and sequence numbers: not seen: the kernel does not show "
                    "a socket its segments, only their bytes",
                ),
            ),
            Layer(
                APPLICATION_WEB if web else APPLICATION,
                (
                    f"a WebSocket text message of {len(data)} bytes, "
                    f"{data[:SHOWN]!r}{'...' if len(data) > SHOWN else ''}: the "
                    "frame's header and mask were taken off before the server "
                    "saw it; one message is one line",
                )
                if web
                else tuple(_payload_facts(data, len(data), framing_raw=framing_raw)),
            ),
        ),
    )


def render_layers(
    layers: Layers, *, title: str = "one segment, layer by layer"
) -> list[str]:
    """The layers as lines, each made safe to show."""
    out = [safe_text(f"{title}, from {layers.source}:")]
    for layer in layers.layers:
        out.append(safe_text(layer.name))
        out.extend(safe_text(f"  {fact}") for fact in layer.facts)
    return out
