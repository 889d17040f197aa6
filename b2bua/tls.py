"""SIP over TLS: the ``[sip.tls]`` files checked before pjsip is given them (pure: no pjsua2).

OpenSSL's own errors for a missing or unreadable file, or a key that is not PEM, come back
from pjsip as one status code at start-up ("cannot listen on tls:..."). Checked here first,
each problem names the setting and the path, in ``b2bua check-config`` too. What OpenSSL alone
can judge (a key that does not match the certificate, an expired certificate) is still its
error, reported with the listener.

TLS needs a ``tls:`` listener: pjsip makes outgoing TLS connections through the factory that
listener creates, with the same certificate (presented to a server that asks for one, mutual
TLS) and the same checks (``verify_server``).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

from b2bua.config import Config, ConfigError, SipConfig

#: a PEM file larger than this is not a certificate chain or a CA bundle we read (Debian's
#: bundle is ~220 KB)
MAX_PEM_BYTES = 4 * 1024 * 1024
#: what each file must hold: a PEM block of this kind
_PEM_MARKS = {
    "certificate": (b"-----BEGIN CERTIFICATE-----",),
    "private_key": (b"-----BEGIN PRIVATE KEY-----", b"-----BEGIN RSA PRIVATE KEY-----",
                    b"-----BEGIN EC PRIVATE KEY-----", b"-----BEGIN ENCRYPTED PRIVATE KEY-----"),
    "ca_list": (b"-----BEGIN CERTIFICATE-----",),
}


@dataclass(frozen=True)
class TlsFiles:
    """The ``[sip.tls]`` files as absolute paths (``""``: not set), and warnings about them."""

    certificate: str = ""
    private_key: str = ""
    ca_list: str = ""
    warnings: tuple[str, ...] = ()


def uses_tls(sip: SipConfig) -> bool:
    """Whether ``[sip] listen`` has a ``tls:`` listener (without one the B2BUA speaks no TLS)."""
    return any(listener.transport == "tls" for listener in sip.listeners)


def check_tls_files(config: Config) -> TlsFiles:
    """The ``[sip.tls]`` files resolved against the config's folder, each a readable PEM file of
    the right kind; nothing is read without a ``tls:`` listener.

    :raises ConfigError: naming each setting whose file cannot be used, and why.
    """
    tls = config.sip.tls
    if not uses_tls(config.sip):
        return TlsFiles()
    where = config.where("sip.tls")
    paths: dict[str, str] = {}
    errors: list[str] = []
    warnings: list[str] = []
    for name, value in tls.files():
        path = config.resolve_path(value)
        problem = _pem_problem(path, _PEM_MARKS[name])
        if problem:
            errors.append(f"{where} {name}: {path}: {problem}")
            continue
        paths[name] = str(path)
        if name == "private_key" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            warnings.append(f"{where} private_key: {path} is readable or writable by others: chmod 600 {path}")
    if errors:
        raise ConfigError(*errors)
    return TlsFiles(paths.get("certificate", ""), paths.get("private_key", ""), paths.get("ca_list", ""),
                    tuple(warnings))


def _pem_problem(path: Path, marks: tuple[bytes, ...]) -> str:
    """Why ``path`` is not a PEM file holding one of ``marks`` (``""``: it is)."""
    try:
        if not path.is_file():
            return "no such file" if not path.exists() else "not a file"
        if path.stat().st_size > MAX_PEM_BYTES:
            return f"larger than {MAX_PEM_BYTES // (1024 * 1024)} MB: not a PEM file"
        data = path.read_bytes()
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    if not any(mark in data for mark in marks):
        return f"no {marks[0].decode().strip('-').replace('BEGIN ', '').lower()} in PEM form in it"
    return ""
