"""A throw-away CA, a server certificate for 127.0.0.1 and a client certificate, written as PEM files.

Made with ``cryptography`` (already a dependency) so that TLS tests need no
openssl binary; P-256 keys, valid for a day.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class TLSFiles:
    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _issue(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate | None,
    ca_key: ec.EllipticCurvePrivateKey,
    **kind: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.subject if ca is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None), critical=True)
    )
    if ca is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH if kind.get("client") else ExtendedKeyUsageOID.SERVER_AUTH]
        if kind.get("also_client"):
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    else:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    return builder.sign(ca_key, hashes.SHA256())


def make(directory: Path, *, server_also_client: bool = False) -> TLSFiles:
    """Write ca.crt, server.crt/key (for 127.0.0.1 and localhost) and client.crt/key into ``directory``.

    ``server_also_client``: the server certificate is good for client authentication too
    (etcd's JSON gateway presents it to etcd's own gRPC server).
    """
    ca_key = _key()
    ca = _issue("lvsguard test CA", ca_key, None, ca_key)
    files = TLSFiles(
        directory / "ca.crt",
        directory / "server.crt",
        directory / "server.key",
        directory / "client.crt",
        directory / "client.key",
    )
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for cert_path, key_path, client in ((files.cert, files.key, False), (files.client_cert, files.client_key, True)):
        key = _key()
        cert_path.write_bytes(
            _issue(
                "127.0.0.1", key, ca, ca_key, client=client, also_client=server_also_client and not client
            ).public_bytes(serialization.Encoding.PEM)
        )
        _write_key(key_path, key)
    return files
