"""docs/examples/callerid.py: the number formats it writes (its hook runs over SIP in
tests/e2e/test_callerid_example.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "callerid_example", Path(__file__).resolve().parents[2] / "docs" / "examples" / "callerid.py")
assert _spec is not None and _spec.loader is not None
callerid = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(callerid)
normalise, with_user = callerid.normalise, callerid.with_user


@pytest.mark.parametrize(("number", "style", "expected"), [
    ("0301234567", "e164", "+49301234567"),
    ("0049301234567", "e164", "+49301234567"),
    ("+49301234567", "e164", "+49301234567"),
    ("+49301234567", "national", "0301234567"),
    ("0049301234567", "national", "0301234567"),
    ("+33123456789", "national", "0033123456789"),
    ("0301234567", "national", "0301234567"),
    ("123", "e164", "123"),
    ("anonymous", "e164", "anonymous"),
    ("0301234567", "keep", "0301234567"),
])
def test_normalise(number: str, style: str, expected: str) -> None:
    assert normalise(number, style, "49") == expected


def test_with_user() -> None:
    assert with_user("sip:0301234567@pbx.example;user=phone", "e164", "49") == "sip:+49301234567@pbx.example;user=phone"
    assert with_user("tel:0301234567;phone-context=+49", "e164", "49") == "tel:+49301234567;phone-context=+49"
    assert with_user("sip:pbx.example", "e164", "49") == "sip:pbx.example"
