"""A throw-away certificate authority and the certificates it signs.

`create_pki` writes everything the tests need into one directory:

- ``ca.crt`` / ``ca.key``: the test CA that clients are told to trust;
- ``server.crt`` / ``server.key``: for ``127.0.0.1`` and ``localhost``;
- ``wrong-host.crt`` / ``wrong-host.key``: signed by the test CA, but only
  for ``wrong.example``, for hostname-mismatch tests;
- ``other-ca.crt`` / ``other-ca.key``: an unrelated CA, for "unknown CA" tests;
- ``other-server.crt`` / ``other-server.key``: for ``127.0.0.1`` and
  ``localhost``, signed by the unrelated CA;
- ``trust/ca.crt``: a directory holding only the test CA, laid out the way
  ``skopeo --cert-dir`` and Docker's ``certs.d/<host>/`` expect it.

All files are PEM. Keys are unencrypted: they protect nothing.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "Authority",
    "CertificateFiles",
    "TestPKI",
    "create_authority",
    "create_pki",
    "issue_certificate",
]

_VALIDITY = datetime.timedelta(days=30)
# Certificates start a little in the past so that a clock a few seconds
# behind the test's does not see them as "not yet valid".
_BACKDATE = datetime.timedelta(hours=1)

LOOPBACK_NAMES = ("localhost",)
LOOPBACK_ADDRESSES = ("127.0.0.1",)


@dataclass(frozen=True)
class CertificateFiles:
    """A certificate and its private key, as PEM files."""

    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class Authority:
    """A CA: its PEM files, and the objects needed to sign with it."""

    files: CertificateFiles
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_file(self) -> Path:
        """The CA certificate, the file clients are told to trust."""
        return self.files.cert_file


@dataclass(frozen=True)
class TestPKI:
    """Everything `create_pki` wrote, by role."""

    __test__ = False  # not a pytest test class, despite the name

    directory: Path
    ca: Authority
    server: CertificateFiles
    wrong_host: CertificateFiles
    other_ca: Authority
    other_server: CertificateFiles
    trust_dir: Path

    @property
    def ca_file(self) -> Path:
        """The test CA certificate."""
        return self.ca.cert_file


def create_pki(directory: Path) -> TestPKI:
    """Create the test CA, an unrelated CA and their certificates in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = create_authority(directory, stem="ca", common_name="reconciler test CA")
    other = create_authority(
        directory,
        stem="other-ca",
        common_name="reconciler unrelated CA",
    )
    return TestPKI(
        directory=directory,
        ca=ca,
        server=issue_certificate(ca, directory, stem="server"),
        wrong_host=issue_certificate(
            ca,
            directory,
            stem="wrong-host",
            dns_names=("wrong.example",),
            ip_addresses=(),
        ),
        other_ca=other,
        other_server=issue_certificate(other, directory, stem="other-server"),
        trust_dir=_write_trust_dir(directory / "trust", ca.cert_file),
    )


def create_authority(
    directory: Path,
    *,
    stem: str = "ca",
    common_name: str = "reconciler test CA",
) -> Authority:
    """Create a self-signed CA as ``<stem>.crt`` and ``<stem>.key``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = _builder(name, name, key.public_key())
    builder = builder.add_extension(
        x509.BasicConstraints(ca=True, path_length=0),
        critical=True,
    )
    builder = builder.add_extension(_ca_key_usage(), critical=True)
    certificate = builder.sign(key, hashes.SHA256())
    files = _write_pair(directory, stem, certificate, key)
    return Authority(files=files, certificate=certificate, key=key)


def issue_certificate(
    authority: Authority,
    directory: Path,
    *,
    stem: str,
    dns_names: tuple[str, ...] = LOOPBACK_NAMES,
    ip_addresses: tuple[str, ...] = LOOPBACK_ADDRESSES,
) -> CertificateFiles:
    """Issue a TLS server certificate for the given names, signed by `authority`."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, (dns_names + ip_addresses)[0])]
    )
    builder = _builder(subject, authority.certificate.subject, key.public_key())
    builder = builder.add_extension(
        _subject_alternative_names(dns_names, ip_addresses),
        critical=False,
    )
    builder = builder.add_extension(
        x509.BasicConstraints(ca=False, path_length=None),
        critical=True,
    )
    builder = builder.add_extension(
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
        critical=False,
    )
    certificate = builder.sign(authority.key, hashes.SHA256())
    return _write_pair(directory, stem, certificate, key)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
    )


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _subject_alternative_names(
    dns_names: tuple[str, ...],
    ip_addresses: tuple[str, ...],
) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    return x509.SubjectAlternativeName(names)


def _write_pair(
    directory: Path,
    stem: str,
    certificate: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
) -> CertificateFiles:
    cert_file = directory / f"{stem}.crt"
    key_file = directory / f"{stem}.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return CertificateFiles(cert_file=cert_file, key_file=key_file)


def _write_trust_dir(trust_dir: Path, ca_file: Path) -> Path:
    # skopeo --cert-dir reads every *.crt as a CA, and refuses a *.key that
    # has no matching *.cert: the directory must hold the CA and nothing else.
    trust_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ca_file, trust_dir / "ca.crt")
    return trust_dir
