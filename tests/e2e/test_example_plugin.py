"""The example plugin of docs/hooks.md (``docs/examples/prefix_router.py``) over real SIP: alone,
and next to the built-in plugins in the documented configuration (issue 13); and the doc's
"try it" commands with the configuration it shows, as a newcomer types them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from .configs import ListEntry, b2bua_config, toml_table, write_list_file
from .conftest import B2buaFactory, GatewayFactory
from .harness import REPO_ROOT, AddressAllocator, Caller, free_port
from .test_host import host_config

#: the example's folder on the B2BUA's Python path, as docs/hooks.md tells users to do
EXAMPLE_ENV = {"PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "docs" / "examples"), str(REPO_ROOT)])}
ROUTER = "prefix_router:PrefixRouter"
HOOKS_MD = REPO_ROOT / "docs" / "hooks.md"


def doc_config() -> dict[str, object]:
    """The ``[plugins]`` TOML docs/hooks.md tells users to put in config.toml."""
    block = HOOKS_MD.read_text().split("```toml\n[plugins]\n", 1)[1].split("```", 1)[0]
    return tomllib.loads("[plugins]\n" + block)["plugins"]


def test_the_doc_enables_the_example_as_tested() -> None:
    """The configuration this file tests ("documented-order" below) is the one the doc shows."""
    plugins = doc_config()
    assert plugins["enabled"] == [ROUTER, "dispatcher", "failover"]
    routes = plugins["prefix_router"]
    assert isinstance(routes, dict) and list(routes) == ["49"]


def test_the_docs_try_it_commands(workdir: Path) -> None:
    """docs/hooks.md's commands from a folder like the repository's: the shipped config.toml with
    the doc's [plugins] edits, the example copied into myplugins/; ``check-config`` says OK with
    ``PYTHONPATH=myplugins`` and, without it, the error the doc quotes."""
    doc = HOOKS_MD.read_text()
    plugins = doc_config()
    config = (REPO_ROOT / "config.toml").read_text()
    config, n = re.subn(r"^enabled = .*$", "enabled = " + repr(plugins["enabled"]).replace("'", '"'), config,
                        flags=re.MULTILINE)
    assert n == 1, "the shipped config.toml has no single [plugins] enabled line"
    routes = plugins["prefix_router"]
    assert isinstance(routes, dict)
    config += "\n[plugins.prefix_router]\n" + "".join(f'"{k}" = "{v}"\n' for k, v in routes.items())
    (workdir / "config.toml").write_text(config)
    (workdir / "myplugins").mkdir()
    shutil.copy(REPO_ROOT / "docs" / "examples" / "prefix_router.py", workdir / "myplugins")
    b2bua = str(Path(sys.executable).with_name("b2bua"))  # .venv/bin/b2bua, as the doc runs it
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "B2BUA_CONFIG")}

    ok = subprocess.run([b2bua, "check-config"], cwd=workdir, env=env | {"PYTHONPATH": "myplugins"},
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "$ PYTHONPATH=myplugins .venv/bin/b2bua check-config\n" + ok.stdout in doc, ok.stdout

    missing = subprocess.run([b2bua, "check-config"], cwd=workdir, env=env, capture_output=True, text=True,
                             timeout=60)
    assert missing.returncode == 2
    (error,) = [line for line in missing.stderr.splitlines() if line.startswith("error: ")]
    assert " ".join(error.split()) in " ".join(doc.split()), error


def test_example_plugin_routes_by_prefix(b2bua_factory: B2buaFactory, addresses: AddressAllocator,
                                         gateway_factory: GatewayFactory, caller: Caller) -> None:
    germany, france = gateway_factory("answer"), gateway_factory("answer")
    ip = addresses.next()
    port = free_port(ip, "both")
    config = host_config(ip, port, plugins=f'["{ROUTER}"]',
                         extra=f'[plugins.prefix_router]\n"49" = "{germany.uri}"\n"33" = "{france.uri}"\n')
    b2bua_factory(config, env=EXAMPLE_ENV)
    assert caller.run_calls(ip, port, n=2, rate=5, service="4930123").final_codes == [200, 200]
    assert caller.run_calls(ip, port, n=1, service="33123").final_codes == [200]
    nowhere = caller.run_calls(ip, port, n=1, service="1555", behaviour="expect:503")
    assert nowhere.final_codes == [503], "no prefix and no default_target: the no-route answer"
    assert (germany.count("INVITE"), france.count("INVITE")) == (2, 1)


@pytest.mark.parametrize(
    "enabled",
    [
        pytest.param([ROUTER, "dispatcher", "failover"], id="documented-order"),
        pytest.param(["dispatcher", "failover", ROUTER], id="built-ins-first"),
    ],
)
def test_users_router_is_asked_before_the_dispatcher(
        enabled: list[str], b2bua_factory: B2buaFactory, addresses: AddressAllocator,
        gateway_factory: GatewayFactory, caller: Caller, workdir: Path) -> None:
    """The built-in decision hooks are ``trylast``: a user's router decides first whatever the
    order in ``enabled``, and what it leaves (returns None for) reaches the dispatcher."""
    germany, pool = gateway_factory("answer"), gateway_factory("answer")
    ip = addresses.next()
    port = free_port(ip, "udp")
    write_list_file(workdir, [ListEntry(1, pool.uri)])
    config = b2bua_config(ip, port, failover={}, plugins=enabled) + "\n" + toml_table(
        "plugins.prefix_router", {"49": germany.uri})
    b2bua_factory(config, env=EXAMPLE_ENV)
    routed = caller.run_calls(ip, port, n=3, rate=10, service="4930123")
    assert routed.final_codes == [200] * 3, routed.describe()
    rest = caller.run_calls(ip, port, n=2, rate=10, service="1555")
    assert rest.final_codes == [200] * 2, rest.describe()
    assert (germany.count("INVITE"), pool.count("INVITE")) == (3, 2)
    assert all(m.first_line.startswith("INVITE sip:49") for m in germany.requests("INVITE"))
    assert all(m.first_line.startswith("INVITE sip:1555@") for m in pool.requests("INVITE"))
