"""``[sip.tls]``: the settings and the files they name (b2bua.config.TlsConfig, b2bua.tls)."""

from __future__ import annotations

from pathlib import Path

import pytest

from b2bua.config import ConfigError, parse_config, secrets_warning
from b2bua.tls import check_tls_files, uses_tls

CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"


def config(tmp_path: Path, listen: tuple[str, ...] = ("tls:127.0.0.1:5061",), **tls: object):
    values = {"certificate": "cert.pem", "private_key": "key.pem", "ca_list": "ca.pem", **tls}
    return parse_config({"sip": {"listen": list(listen), "tls": values}}, str(tmp_path / "config.toml"), tmp_path)


def files(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text(CERT)
    (tmp_path / "ca.pem").write_text(CERT * 3)
    key = tmp_path / "key.pem"
    key.write_text(KEY)
    key.chmod(0o600)


def test_the_files_resolve_against_the_config_folder(tmp_path: Path) -> None:
    files(tmp_path)
    got = check_tls_files(config(tmp_path))
    assert (got.certificate, got.private_key, got.ca_list) == (
        str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"), str(tmp_path / "ca.pem"))
    assert got.warnings == ()


def test_every_unusable_file_is_named_with_why(tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_text("-----BEGIN CERTIFICATE-----\n")  # a certificate where the key goes
    (tmp_path / "ca.pem").mkdir()
    with pytest.raises(ConfigError) as info:
        check_tls_files(config(tmp_path))
    where = f"{tmp_path / 'config.toml'}: [sip.tls]"
    assert list(info.value.errors) == [
        f"{where} certificate: {tmp_path / 'cert.pem'}: no such file",
        f"{where} private_key: {tmp_path / 'key.pem'}: no private key in PEM form in it",
        f"{where} ca_list: {tmp_path / 'ca.pem'}: not a file",
    ]


def test_a_key_others_can_read_is_warned_about(tmp_path: Path) -> None:
    files(tmp_path)
    (tmp_path / "key.pem").chmod(0o644)
    (warning,) = check_tls_files(config(tmp_path)).warnings
    assert warning.endswith(f"is readable or writable by others: chmod 600 {tmp_path / 'key.pem'}")


def test_without_a_tls_listener_no_file_is_read(tmp_path: Path) -> None:
    cfg = config(tmp_path, listen=("udp:127.0.0.1:5060",))
    assert not uses_tls(cfg.sip) and check_tls_files(cfg).certificate == ""


@pytest.mark.parametrize(("sip", "message"), [
    ({"listen": ["tls:127.0.0.1:5061"]}, "listen: tls:127.0.0.1:5061 needs a certificate: set [sip.tls]"),
    ({"tls": {"certificate": "c.pem"}}, "certificate and private_key: set both or neither"),
    ({"tls": {"min_version": "1.0"}}, "min_version: '1.0' is not one of 1.2, 1.3"),
    ({"tls": {"ca_list": ""}}, "ca_list: needed to verify certificates"),
    ({"listen": ["tls:127.0.0.1"]}, "expected 'udp:ADDRESS:PORT', 'tcp:ADDRESS:PORT' or 'tls:ADDRESS:PORT'"),
])
def test_bad_settings_name_where(sip: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"sip": sip})
    assert message in str(info.value)


def test_a_key_password_in_a_readable_config_is_warned_about(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("")
    path.chmod(0o644)
    cfg = parse_config({"sip": {"tls": {"certificate": "c", "private_key": "k", "private_key_password": "s3cret"}}})
    assert "holds passwords" in secrets_warning(cfg, path)
    assert "s3cret" not in repr(cfg.sip.tls)
