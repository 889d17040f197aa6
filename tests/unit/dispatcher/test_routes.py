"""Route rules: which rule a call matches."""

from __future__ import annotations

import pytest

from b2bua.api import CallInfo
from plugins.dispatcher.config import Route
from plugins.dispatcher.routes import match_route, route_matches


def call(**kw: object) -> CallInfo:
    base: dict[str, object] = dict(
        id=1,
        call_id="c@x",
        request_uri="sip:+4930123@b2bua.example;user=phone",
        from_uri="sip:alice@a.example",
        to_uri="sip:+4930123@b2bua.example",
        source_ip="10.1.2.3",
        source_port=5060,
        headers={"x-tenant": ("gold",), "p-asserted-identity": ("<sip:+4911@pbx>",)},
    )
    base.update(kw)
    return CallInfo(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("route", "kw", "matches"),
    [
        (Route(), {}, True),
        (Route(method="invite"), {}, True),
        (Route(method="MESSAGE"), {}, False),
        (Route(ruri_user_prefix="+49"), {}, True),
        (Route(ruri_user_prefix="+43"), {}, False),
        (Route(ruri_user_prefix="b2bua"), {}, False),  # the host is not the user
        (Route(ruri_regex=r"user=phone$"), {}, True),
        (Route(ruri_regex=r"^sips:"), {}, False),
        (Route(source=("10.1.0.0/16",)), {}, True),
        (Route(source=("10.2.0.0/16", "10.1.2.3")), {}, True),
        (Route(source=("10.2.0.0/16",)), {}, False),
        (Route(source=("10.1.0.0/16",)), {"source_ip": "::ffff:10.1.2.3"}, True),
        (Route(source=("2001:db8::/32",)), {"source_ip": "2001:db8::5"}, True),
        (Route(source=("2001:db8::/32",)), {}, False),
        (Route(source=("10.0.0.0/8",)), {"source_ip": ""}, False),
        (Route(header="X-Tenant"), {}, True),
        (Route(header="X-Other"), {}, False),
        (Route(header="x-tenant", header_value=" gold "), {}, True),
        (Route(header="x-tenant", header_value="silver"), {}, False),
        (Route(header="P-Asserted-Identity", header_regex=r"\+49"), {}, True),
        (Route(header="P-Asserted-Identity", header_regex=r"\+43"), {}, False),
        (Route(method="INVITE", ruri_user_prefix="+49", source=("10.0.0.0/8",), header="x-tenant"), {}, True),
        (Route(method="INVITE", ruri_user_prefix="+49", source=("192.0.2.0/24",)), {}, False),
    ],
)
def test_route_matches(route: Route, kw: dict[str, object], matches: bool) -> None:
    assert route_matches(route, call(**kw)) is matches


def test_first_matching_rule_wins() -> None:
    routes = [Route(ruri_user_prefix="+43", set=3), Route(ruri_user_prefix="+49", set=2), Route(set=1)]
    assert match_route(routes, call()) == (1, routes[1])
    assert match_route(routes, call(request_uri="sip:+33@x")) == (2, routes[2])


def test_no_rule_matches() -> None:
    assert match_route([Route(method="OPTIONS")], call()) is None
    assert match_route([], call()) is None
