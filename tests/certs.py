"""Certificates made at test time, with trustme: a CA, a server, a client."""

from __future__ import annotations

from pathlib import Path

import trustme


def make_tls_files(directory: Path, hostname: str = "localhost") -> dict[str, Path]:
    """Write ca/ca.pem and the server's and a client's keys and certificates."""
    ca = trustme.CA()
    server = ca.issue_cert(hostname)
    client = ca.issue_cert("sockchat-test-client")
    (directory / "ca").mkdir(exist_ok=True)
    paths = {
        "ca": directory / "ca" / "ca.pem",
        "key": directory / "server.key",
        "cert": directory / "server.pem",
        "client_key": directory / "client.key",
        "client_cert": directory / "client.pem",
    }
    ca.cert_pem.write_to_path(paths["ca"])
    server.private_key_pem.write_to_path(paths["key"])
    server.cert_chain_pems[0].write_to_path(paths["cert"])
    client.private_key_pem.write_to_path(paths["client_key"])
    client.cert_chain_pems[0].write_to_path(paths["client_cert"])
    return paths
