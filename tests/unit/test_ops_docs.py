"""The operator docs stay true to the code: every metric documented, the Grafana dashboard
querying only metrics that exist, the systemd unit in deploy.md the one shipped."""

from __future__ import annotations

import json
import re
from pathlib import Path

from b2bua.config import SipConfig, rtp_port_span
from b2bua.loop import run_task_now
from b2bua.stats import Histogram, ProcessSnapshot, core_families
from plugins.dispatcher.counters import DispatcherCounters
from plugins.dispatcher.drain import DrainWatch
from plugins.dispatcher.metrics import DispatcherStats
from plugins.dispatcher.model import Destination, build_snapshot
from plugins.dispatcher.runtime import DispatcherState

DOCS = Path(__file__).resolve().parents[2] / "docs"


def snapshot() -> ProcessSnapshot:
    return ProcessSnapshot("0", "up", 0.0, 0, 0, 0, 0, {}, {}, {}, 0, 0, 0, 0, 0, False, False, False, 1.0)


def every_family() -> dict[str, str]:
    """Every metric family the B2BUA exposes, name -> kind."""
    state = DispatcherState()
    dest = Destination(1, "sip:10.0.0.1:5060")
    state.swap(build_snapshot([dest], "t"), keep_state=False)
    counters = DispatcherCounters(lambda key: True)
    counters.failed(dest.key, "response", 503)
    counters.keepalive_done(dest.key, True, 0.01)
    assert isinstance(counters.by_key[dest.key].rtt, Histogram)
    dispatcher = DispatcherStats(state, counters, DrainWatch())
    families = [*core_families(snapshot()), *run_task_now(dispatcher.collect_steps())]
    return {f.name: f.kind for f in families}


def test_every_metric_is_documented_with_its_type() -> None:
    text = (DOCS / "metrics.md").read_text()
    for name, kind in every_family().items():
        row = next((line for line in text.splitlines() if line.startswith(f"| `{name}`") or f"`{name}`," in line), None)
        assert row is not None, f"docs/metrics.md has no table row for {name}"
        assert f"| {kind} |" in row, f"docs/metrics.md: {name} is a {kind}"


def test_the_dashboard_queries_metrics_that_exist() -> None:
    dashboard = json.loads((DOCS / "grafana" / "b2bua.json").read_text())
    known = set(every_family())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [v["query"]["query"] for v in dashboard["templating"]["list"] if isinstance(v.get("query"), dict)]
    assert len(queries) > 20
    for query in queries:
        for name in re.findall(r"\b(b2bua_[a-z0-9_]+)", query):
            base = re.sub(r"_(bucket|count|sum)$", "", name)
            assert name in known or base in known, f"the dashboard queries {name}, which the B2BUA does not expose"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_the_unit_in_deploy_md_is_the_shipped_one() -> None:
    text = (DOCS / "deploy.md").read_text()
    block = text.split("```ini\n", 1)[1].split("```", 1)[0]
    shipped = [line for line in (DOCS / "examples" / "b2bua.service").read_text().splitlines()
               if line and not line.startswith("#")]
    shown = [line for line in block.splitlines() if line and not line.startswith("...")]
    position = 0
    for line in shown:  # in the same order, the shipped file may have more (comments, hardening)
        assert line in shipped[position:], f"deploy.md shows {line!r}, not in docs/examples/b2bua.service (in order)"
        position = shipped.index(line, position) + 1
    assert "Type=notify" in shipped and any(line.startswith("WatchdogSec=") for line in shipped)


def test_the_rtp_range_in_deploy_md_is_the_default_one() -> None:
    """The firewall rule deploy.md shows opens the RTP ports pjsua is given with the defaults
    (``[sip] rtp_port`` and ``rtp_port_span``), and media.md names the same range."""
    sip = SipConfig()
    first, last = sip.rtp_port, sip.rtp_port + rtp_port_span(sip) - 1
    rule = re.search(r"^udp dport (\d+)-(\d+) accept", (DOCS / "deploy.md").read_text(), re.MULTILINE)
    assert rule, "deploy.md shows no firewall rule for the RTP range"
    assert (int(rule[1]), int(rule[2])) == (first, last)
    assert f"{first}-{last} with the defaults" in " ".join((DOCS / "media.md").read_text().split())
