"""Check TLS key and certificate files before they are used.

Every mistake with a TLS file, on the server (``--port ssl:...``,
``--tls-client-ca``) or the client (``--ca``, ``--cert``, ``--key``), is a
``TLSFileError`` whose message is one line: which file, given how, and what
is wrong with it (missing, not PEM, a key where a certificate belongs or
the other way round, encrypted, or a key that is not the certificate's).
OpenSSL's own errors, a tuple of tuples, never reach the user.  No I/O
beyond reading the files.
"""

from __future__ import annotations

from pathlib import Path

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

__all__ = [
    "TLSFileError",
    "TLSFiles",
    "check_certificate",
    "check_pair",
    "check_private_key",
]

_KEY_LABEL = b"PRIVATE KEY-----"
_CERT_LABEL = b"-----BEGIN CERTIFICATE-----"


class TLSFileError(ValueError):
    """A TLS file that cannot be used; the message is one line."""


@frozen
class TLSFiles:
    """A certificate and its private key, checked to match."""

    certificate: x509.Certificate
    key: PrivateKeyTypes


def _read(what: str, path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except IsADirectoryError:
        raise TLSFileError(f"{what}: is a directory, not a PEM file") from None
    except OSError as e:
        raise TLSFileError(f"{what}: {e.strerror or e}") from None
    if b"-----BEGIN " not in data:
        raise TLSFileError(f"{what}: is not a PEM file (it has no '-----BEGIN' line)")
    return data


def check_certificate(what: str, path: str) -> x509.Certificate:
    """The first certificate in the PEM file at *path*.

    *what* names the file in messages, e.g. ``--ca ca.pem``.
    """
    data = _read(what, path)
    if _CERT_LABEL not in data:
        if _KEY_LABEL in data:
            raise TLSFileError(f"{what}: holds a private key, not a certificate")
        raise TLSFileError(f"{what}: holds no PEM certificate")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise TLSFileError(f"{what}: its certificate is damaged") from None


def check_private_key(what: str, path: str) -> PrivateKeyTypes:
    """The private key in the PEM file at *path*, which must not be encrypted."""
    data = _read(what, path)
    if _KEY_LABEL not in data:
        if _CERT_LABEL in data:
            raise TLSFileError(f"{what}: holds a certificate, not a private key")
        raise TLSFileError(f"{what}: holds no PEM private key")
    if b"ENCRYPTED" in data:
        raise TLSFileError(
            f"{what}: the key is encrypted; give one without a passphrase"
        )
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise TLSFileError(f"{what}: its private key is damaged") from None
    except Exception as e:  # a key type this cryptography does not support
        raise TLSFileError(
            f"{what}: its private key cannot be used ({type(e).__name__})"
        ) from None


def check_pair(
    cert_what: str, cert_path: str, key_what: str, key_path: str
) -> TLSFiles:
    """A certificate and the private key that goes with it."""
    certificate = check_certificate(cert_what, cert_path)
    key = check_private_key(key_what, key_path)
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(
        der, public
    ) != certificate.public_key().public_bytes(der, public):
        raise TLSFileError(
            f"{cert_what} and {key_what} do not match: that key is not the "
            "certificate's; give the key the certificate was made for"
        )
    return TLSFiles(certificate, key)
