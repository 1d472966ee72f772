"""Build the client's endpoint from its options: TCP, UNIX or verified TLS.

Errors are ``ValueError`` with a one-line message for the user.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from twisted.internet.endpoints import (
    HostnameEndpoint,
    _parse,
    clientFromString,
    wrapClientTLS,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS

from sockchat._doors.tlsfiles import check_certificate, check_pair

__all__ = ["client_endpoint"]


def _tls_target(description: str) -> tuple[str, int]:
    """Host and port of a ``tls:HOST:PORT`` (or ``tls:host=H:port=P``) description."""
    args, kwargs = _parse(description)
    positional = [str(a) for a in args[1:]]
    host = kwargs.get("host") or (positional[0] if positional else None)
    port = kwargs.get("port") or (positional[1] if len(positional) > 1 else None)
    if not host or not port or not str(port).isdigit():
        raise ValueError(f"--connect {description!r}: expected tls:HOST:PORT")
    return str(host), int(port)


def client_endpoint(
    reactor: Any,
    *,
    host: str,
    port: int,
    connect: str | None = None,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
) -> IStreamClientEndpoint:
    """The endpoint the client options describe.

    ``--ca``, ``--cert`` and ``--key`` go with ``--connect tls:HOST:PORT``.
    The server's certificate and hostname are always verified (service-identity):
    against ``--ca`` if given, else against the system's trusted CAs.
    """
    tls_files = ca or cert or key
    if connect is None:
        if tls_files:
            raise ValueError("--ca, --cert and --key need --connect tls:HOST:PORT")
        return HostnameEndpoint(reactor, host, port)
    if not (tls_files and connect.startswith("tls:")):
        if tls_files:
            raise ValueError("--ca, --cert and --key need --connect tls:HOST:PORT")
        try:
            endpoint: IStreamClientEndpoint = clientFromString(reactor, connect)
        except TypeError:  # Twisted's way of saying that a part is missing
            raise ValueError(
                f"--connect {connect!r} is incomplete: give tcp:HOST:PORT, "
                "tls:HOST:PORT or unix:PATH (an IPv6 address needs --host, e.g. "
                "--host ::1, or its colons escaped: tcp:\\:\\:1:9527)"
            ) from None
        except (ValueError, KeyError) as e:
            raise ValueError(
                f"--connect {connect!r} is not a client endpoint description ({e})"
            ) from None
        return endpoint
    if bool(cert) != bool(key):
        raise ValueError("--cert and --key go together")
    tls_host, tls_port = _tls_target(connect)
    # Each file is checked first, so that every mistake is one line naming
    # the file (TLSFileError is a ValueError).
    trust = None
    if ca:
        trust = Certificate.loadPEM(
            check_certificate(f"--ca {ca}", ca).public_bytes(Encoding.PEM)
        )
    mine = None
    if cert and key:
        pair = check_pair(f"--cert {cert}", cert, f"--key {key}", key)
        pem = pair.certificate.public_bytes(Encoding.PEM) + pair.key.private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
        )
        mine = PrivateCertificate.loadPEM(pem)  # type: ignore[no-untyped-call]  # Twisted's ssl is unannotated
    options = optionsForClientTLS(tls_host, trustRoot=trust, clientCertificate=mine)
    return wrapClientTLS(options, HostnameEndpoint(reactor, tls_host, tls_port))
