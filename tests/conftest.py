"""Shared by every test: only the session header that makes a CI log self-explaining."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Show which Python and which sipp ran the tests (the e2e results depend on both)."""
    sipp = shutil.which("sipp")
    version = "not installed (e2e tests will fail: install sip-tester)"
    if sipp is not None:
        out = subprocess.run([sipp, "-v"], capture_output=True, text=True, timeout=10, check=False).stdout
        version = f"{sipp} ({next((ln.strip() for ln in out.splitlines() if 'SIPp' in ln), 'unknown version')})"
    return [f"python: {sys.executable}", f"sipp: {version}"]
