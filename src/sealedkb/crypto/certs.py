"""Read X.509 certificates for ``sealedkb doctor``: names and validity dates only.

Python's ``ssl`` module verifies chains and host names but cannot decode a
certificate it did not verify (an expired one, say) or the certificates in a CA
file. This module does, with ``cryptography.x509``; it lives under ``crypto/``
because only ``crypto/`` imports ``cryptography`` (house rule). Nothing here
judges trust: that stays with OpenSSL (libpq and ``ssl``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from sealedkb.errors import ValidationError


@dataclass(frozen=True)
class CertInfo:
    """What an operator needs to recognise a certificate and see when it expires."""

    subject: str
    issuer: str
    not_before: dt.datetime
    not_after: dt.datetime
    dns_names: tuple[str, ...]

    def days_left(self, now: dt.datetime | None = None) -> float:
        """Days until ``not_after`` (negative once expired)."""
        now = now or dt.datetime.now(dt.UTC)
        return (self.not_after - now).total_seconds() / 86400.0


def _name(name: x509.Name) -> str:
    cns = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if cns:
        return str(cns[0].value)
    return name.rfc4514_string() or "(empty name)"


def _info(cert: x509.Certificate) -> CertInfo:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(str(n) for n in san.get_values_for_type(x509.DNSName))
        dns += tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns = ()
    return CertInfo(
        subject=_name(cert.subject),
        issuer=_name(cert.issuer),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        dns_names=dns,
    )


def describe_der(der: bytes) -> CertInfo:
    """Names and dates of one DER certificate (e.g. the one a server presented)."""
    try:
        return _info(x509.load_der_x509_certificate(der))
    except ValueError:
        raise ValidationError("the certificate cannot be decoded") from None


def describe_pem_file(path: Path) -> list[CertInfo]:
    """Names and dates of every certificate in a PEM file (a CA bundle may hold many)."""
    try:
        data = path.read_bytes()
    except OSError:
        raise ValidationError(f"cannot read {path}") from None
    try:
        return [_info(c) for c in x509.load_pem_x509_certificates(data)]
    except ValueError:
        raise ValidationError(f"{path} holds no readable PEM certificate") from None
