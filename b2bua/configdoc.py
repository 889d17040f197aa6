"""Write ``docs/config.md`` from the configuration dataclasses (their defaults and help lines).

``python -m b2bua.configdoc > docs/config.md``; a test fails when the file is out of date.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
from typing import Any

from b2bua.config import SECTIONS, Credential, PluginsConfig, TlsConfig, describe_bounds

#: tables inside a host section, documented right after it: section -> ((TOML table, class), ...)
HOST_SUBTABLES: dict[str, tuple[tuple[str, type], ...]] = {
    "sip": (("sip.tls", TlsConfig), ("[sip.credentials]", Credential)),
}

#: plugin sections documented with the host's: (TOML table, "module:Class")
PLUGIN_SECTIONS = (
    ("plugins.dispatcher", "plugins.dispatcher.config:DispatcherConfig"),
    ("[plugins.dispatcher.routes]", "plugins.dispatcher.config:Route"),
    ("plugins.failover", "plugins.failover.config:FailoverConfig"),
    ("plugins.cdr", "plugins.cdr.config:CdrConfig"),
)

INTRO = """# Configuration reference

`b2bua run -c config.toml` reads one TOML file; `b2bua check-config -c config.toml` checks it
(and the plugins it enables) without starting. Without `-c`, every command reads
`$B2BUA_CONFIG` when it is set, else `./config.toml`. Unknown keys, wrong types and values out
of range are errors that name the TOML path, e.g. `config.toml: [sip] max_calls: expected an
integer, got 'many'` or `config.toml: [sip] rtp_port: must be 1024-65534, got 70000`, and
`check-config` reports every one it finds, not only the first. Numbers must be finite (no
`inf`, `nan`) and strings one line (no control characters). Relative paths are relative to the
config file's folder. The shipped `config.toml` is a working example.

This page is generated from the code (`python -m b2bua.configdoc > docs/config.md`).
"""


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def section_table(title: str, cls: type) -> str:
    lines = [f"## `[{title}]`" if not title.startswith("[") else f"## `[{title}]` (array of tables)", ""]
    doc = inspect.cleandoc(cls.__doc__ or "")
    if doc and not doc.startswith(cls.__name__ + "("):
        lines += [doc, ""]
    lines += ["| key | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(cls):
        help_text = f.metadata.get("help")
        if help_text is None:
            continue
        cell = help_text.replace("|", "\\|")
        bounds = f.metadata.get("bounds")
        if bounds is not None:
            cell += f" (range: {describe_bounds(bounds)})"
        lines.append(f"| `{f.name}` | `{_toml(_default(f))}` | {cell} |")
    return "\n".join(lines) + "\n"


def render() -> str:
    parts = [INTRO]
    for name, cls in SECTIONS.items():
        parts.append(section_table(name, cls))
        for title, sub in HOST_SUBTABLES.get(name, ()):
            parts.append(section_table(title, sub))
    parts.append(section_table("plugins", PluginsConfig))
    for title, path in PLUGIN_SECTIONS:
        module, _, attr = path.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        parts.append(section_table(title, cls))
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
