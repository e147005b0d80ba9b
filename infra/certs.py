"""A local certificate authority and server certificates signed by it (the `cryptography` package).

`ensure_ca(dir)` creates, once, a CA key and self-signed certificate under `dir`;
`ensure_server_cert(dir, name, hosts)` creates, once, a key and a certificate for `hosts`
(IP addresses and DNS names) signed by that CA. Later calls reuse the files while they
are valid, cover the asked hosts and chain to the CA on disk; otherwise the server pair
is issued again. Every file is written atomically with mode 0600 (keys and certificates
alike: the run directory is private). `ensure_node_cert(dir, name)` does the same for a
Kafka or Cassandra node: CN = the node's name (its mutual-TLS principal), IP SANs for
every local cluster address (127.0.0.1-9) and `localhost`, EKU serverAuth + clientAuth,
and a `<name>.pem` of key + certificate + CA that both servers load without keystores.
Used by the read API and by `infra up` in secure mode. Operators who bring their own
files simply do not call this module.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from infra.private_files import write_private

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CA_DAYS = 3650
SERVER_DAYS = 825  # the longest validity browsers accept for a leaf certificate
# Issue again when less than this is left, so a long-running service never starts on a
# certificate about to expire.
RENEW_BEFORE = dt.timedelta(days=30)
DEFAULT_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class ServerCert:
    cert: Path
    key: Path
    ca_cert: Path


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _load(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, SigningKey] | None:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (FileNotFoundError, ValueError, TypeError):
        return None
    # EC keys are what this module makes; RSA is what an operator's own CA often has.
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        return None
    return cert, key


def _fresh(cert: x509.Certificate) -> bool:
    return cert.not_valid_after_utc - RENEW_BEFORE > _now() >= cert.not_valid_before_utc


def ensure_ca(directory: Path | str, name: str = "torchstream local CA") -> tuple[Path, Path]:
    """(ca.crt, ca.key) under `directory`, created once (mode 0600, directory 0700)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path, key_path = d / CA_CERT, d / CA_KEY
    loaded = _load(cert_path, key_path)
    if loaded is not None and _fresh(loaded[0]):
        return cert_path, key_path
    if loaded is None and (cert_path.exists() or key_path.exists()):
        # Never replace a CA we cannot read: it may be the operator's own.
        raise RuntimeError(
            f"the CA in {d} ({CA_CERT}, {CA_KEY}) cannot be read: it needs a PEM certificate "
            f"and an unencrypted PEM EC or RSA key; fix or remove both files"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(key_path, _key_pem(key))
    write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _san(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return names


def _covers(cert: x509.Certificate, hosts: Sequence[str]) -> bool:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have = set(ext)
    return all(n in have for n in _san(hosts))


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@dataclass(frozen=True)
class NodeCert:
    """A node's certificate: `pem` holds the key, the certificate and the CA (the PEM
    keystore Kafka and Cassandra load); `cert`/`key` are the same pair as separate files."""

    pem: Path
    cert: Path
    key: Path
    ca_cert: Path


def node_hosts(instances: int = 3) -> list[str]:
    """`localhost`, the Kafka host and every Cassandra address of instances 0..instances-1
    (127.0.0.1-9 for three), so one CA's node certificates serve every local cluster."""
    # Late import: services (the read API) use this module and never load infra.local.
    from infra.local import topology

    hosts = ["localhost", topology.KAFKA_HOST]
    for k in range(instances):
        for i in range(1, topology.MAX_NODES + 1):
            # The same rule as topology.cassandra_node, for instance k instead of this one.
            ip = f"127.0.0.{3 * k + i}"
            if ip not in hosts:
                hosts.append(ip)
    return hosts


def _has_usages(cert: x509.Certificate, usages: Sequence[x509.ObjectIdentifier]) -> bool:
    try:
        ext = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return all(u in ext for u in usages)


def _common_name(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def _issue(
    d: Path,
    name: str,
    hosts: Sequence[str],
    common_name: str,
    usages: Sequence[x509.ObjectIdentifier],
) -> tuple[Path, Path, Path, bool]:
    """(cert, key, ca cert, issued now) for `name` under `d`, reused while still good."""
    if not hosts:
        raise ValueError("a certificate needs at least one host")
    ca_cert_path, ca_key_path = ensure_ca(d)
    ca_loaded = _load(ca_cert_path, ca_key_path)
    if ca_loaded is None:
        raise RuntimeError(f"the CA under {d} cannot be read")
    ca_cert, ca_key = ca_loaded
    cert_path, key_path = d / f"{name}.crt", d / f"{name}.key"
    loaded = _load(cert_path, key_path)
    if (
        loaded is not None
        and _fresh(loaded[0])
        and _covers(loaded[0], hosts)
        and _signed_by(loaded[0], ca_cert)
        and _has_usages(loaded[0], usages)
        and _common_name(loaded[0]) == common_name
    ):
        return cert_path, key_path, ca_cert_path, False
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    not_after = min(now + dt.timedelta(days=SERVER_DAYS), ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(_san(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    write_private(key_path, _key_pem(key))
    write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path, ca_cert_path, True


def ensure_server_cert(
    directory: Path | str, name: str = "server", hosts: Sequence[str] = DEFAULT_HOSTS
) -> ServerCert:
    """`<name>.crt` / `<name>.key` for `hosts`, signed by the CA in `directory` (made if absent)."""
    if not hosts:
        raise ValueError("a server certificate needs at least one host")
    cert, key, ca, _ = _issue(
        Path(directory), name, hosts, hosts[0], [ExtendedKeyUsageOID.SERVER_AUTH]
    )
    return ServerCert(cert=cert, key=key, ca_cert=ca)


def ensure_node_cert(
    directory: Path | str, name: str, hosts: Sequence[str] | None = None
) -> NodeCert:
    """A certificate for node `name` (its CN, hence its mTLS principal), for `hosts`
    (default `node_hosts()`), usable as server and client (EKU serverAuth + clientAuth),
    plus `<name>.pem` = key + certificate + CA. Made once; reused while still good."""
    d = Path(directory)
    cert, key, ca, issued = _issue(
        d,
        name,
        list(hosts) if hosts is not None else node_hosts(),
        name,
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    pem = d / f"{name}.pem"
    if issued or not pem.exists():
        write_private(pem, key.read_bytes() + cert.read_bytes() + ca.read_bytes())
    return NodeCert(pem=pem, cert=cert, key=key, ca_cert=ca)
