"""Certificate facts, so check-relay can tell old's copied certificate from one renewed on new."""

from __future__ import annotations

import base64
import datetime
import hashlib

from cryptography import x509


def certificate_facts(der_b64: str) -> dict:
    """SHA-256, names (SAN, else CN), validity of a DER certificate (base64)."""
    der = base64.b64decode(der_b64)
    cert = x509.load_der_x509_certificate(der)
    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [*san.get_values_for_type(x509.DNSName)]
        names += [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(x509.OID_COMMON_NAME)]
    return {
        "sha256": hashlib.sha256(der).hexdigest(),
        "names": names,
        "self_signed": cert.issuer == cert.subject,
        "not_before": _utc(cert, "not_valid_before"),
        "not_after": _utc(cert, "not_valid_after"),
    }


def _utc(cert: x509.Certificate, field: str) -> float:
    value = getattr(cert, f"{field}_utc", None)  # cryptography >= 42
    if value is None:
        value = getattr(cert, field).replace(tzinfo=datetime.UTC)
    return value.timestamp()


def names_domain(names: list[str], domain: str) -> bool:
    """Whether a certificate with these names is valid for ``domain`` (wildcards:
    one label)."""
    domain = domain.lower().rstrip(".")
    for name in (n.lower().rstrip(".") for n in names):
        if name == domain:
            return True
        if name.startswith("*.") and "." in domain and domain.split(".", 1)[1] == name[2:]:
            return True
    return False


def expected_certificate(old: dict | None, file_facts: dict | None) -> tuple[str | None, str]:
    """The SHA-256 new's listeners should present, and what it is: the certificate old
    had at disable-mail; one renewed on new since (its file, issued after that); or,
    with no record of old's, the relay's certificate file on new."""
    recorded = ((old or {}).get("certificate") or {}).get("sha256")
    if recorded:
        if file_facts and file_facts["sha256"] != recorded and renewed_after_move(old, file_facts):
            return file_facts["sha256"], "the certificate renewed on new since the move"
        return recorded, "the certificate copied from old"
    if file_facts:
        return file_facts["sha256"], "the relay's certificate file (no record of old's)"
    return None, ""


def renewed_after_move(old: dict | None, file_facts: dict) -> bool:
    """A certificate on new that is not old's counts as renewed when a CA issued it
    after the move (acmetool renews before expiry); a self-signed one never does."""
    recorded = ((old or {}).get("certificate") or {}).get("recorded")
    return bool(recorded) and file_facts["not_before"] > recorded and not file_facts["self_signed"]
