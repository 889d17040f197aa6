"""Test certificates for SIP over TLS, made with the ``openssl`` program (scripts/setup.sh --test
installs it): a certificate authority of the test's own and leaf certificates it signs, each for
one loopback address (a subjectAltName IP entry, which pjsip checks against the address dialled).
Valid for two days; P-256 keys (fast to make)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .harness import HarnessError


@dataclass(frozen=True)
class Pem:
    """A certificate and its private key, as files."""

    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    tool = shutil.which("openssl")
    if tool is None:
        raise HarnessError("openssl is not installed (scripts/setup.sh --test installs it)")
    done = subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise HarnessError(f"openssl {' '.join(args[:2])} failed: {done.stderr.strip()[-500:]}")


def make_ca(folder: Path, name: str) -> Pem:
    """A self-signed certificate authority ``name`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=folder)
    return Pem(folder / f"{name}.pem", folder / f"{name}.key")


def make_leaf(folder: Path, ca: Pem, name: str, ip: str) -> Pem:
    """A certificate for ``ip`` (server and client use) signed by ``ca``; its key is mode 600."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.ext").write_text(
        f"subjectAltName=IP:{ip}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", str(ca.cert), "-CAkey", str(ca.key),
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=folder)
    key = folder / f"{name}.key"
    key.chmod(0o600)
    return Pem(folder / f"{name}.pem", key)
