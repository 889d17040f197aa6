"""`b2bua dispatcher simulate`: synthetic calls through the real selection."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest

from plugins.dispatcher.cli import add_dispatcher_commands
from plugins.dispatcher.model import Attrs, DestFlags, Destination, build_snapshot
from plugins.dispatcher.selection import Policy
from plugins.dispatcher.simulate import SimulationResult, format_result, simulate, synthetic_call

SNAP = build_snapshot(
    [
        Destination(1, "sip:gw1.example", attrs=Attrs(weight=75, rweight=1, maxload=10, duid="1")),
        Destination(1, "sip:gw2.example", attrs=Attrs(weight=25, rweight=3, maxload=10, duid="2")),
        Destination(2, "sip:a"),
        Destination(2, "sip:b"),
        Destination(2, "sip:c"),
    ],
    "test",
)


def share(result: SimulationResult, uri: str) -> float:
    return result.counts[uri] / result.calls


def test_weight_75_25() -> None:
    result = simulate(SNAP, 1, 9, calls=10_000)
    assert share(result, "sip:gw1.example") == pytest.approx(0.75, abs=0.02)
    assert share(result, "sip:gw2.example") == pytest.approx(0.25, abs=0.02)
    assert result.no_destination == 0


def test_same_seed_same_result_and_other_seed_differs() -> None:
    assert simulate(SNAP, 2, 6, calls=3000, seed=3) == simulate(SNAP, 2, 6, calls=3000, seed=3)
    assert simulate(SNAP, 2, 6, calls=3000, seed=3).counts != simulate(SNAP, 2, 6, calls=3000, seed=4).counts


def test_down_moves_the_share_kamailio_style_or_spread_with_rehash() -> None:
    kamailio = simulate(SNAP, 2, 0, calls=6000, down=["sip:b"])
    assert kamailio.counts["sip:b"] == 0
    # array order is c, b, a: b's share goes whole to its neighbour a
    assert share(kamailio, "sip:a") == pytest.approx(2 / 3, abs=0.03)
    spread = simulate(SNAP, 2, 0, calls=6000, down=["sip:b"], policy=Policy(rehash=True))
    assert share(spread, "sip:a") == pytest.approx(0.5, abs=0.03)
    assert share(spread, "sip:c") == pytest.approx(0.5, abs=0.03)


def test_everything_down_counts_no_destination() -> None:
    result = simulate(SNAP, 2, 4, calls=10, down=["sip:a", "sip:b", "sip:c"])
    assert result.no_destination == 10
    assert "(no destination)" in format_result(result)


def test_call_load_with_concurrent_calls_spreads_and_respects_maxload() -> None:
    result = simulate(SNAP, 1, 10, calls=1000, concurrent=20)
    assert result.no_destination == 1000 - 20  # 2 x maxload 10 = 20 calls, then full
    balanced = simulate(SNAP, 1, 10, calls=1000, concurrent=10)
    assert balanced.no_destination == 0
    assert min(balanced.counts.values()) / 1000 > 0.4  # least-loaded keeps the two close


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"setid": 9}, r"set 9 is not loaded \(sets: 1, 2\)"),
        ({"down": ["sip:zzz"]}, "--down sip:zzz: not a destination of set 1"),
        ({"calls": 0}, "calls: 0: need at least 1"),
    ],
)
def test_errors(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"setid": 1, "alg": 4} | kwargs
    setid, alg = args.pop("setid"), args.pop("alg")
    with pytest.raises(ValueError, match=message):
        simulate(SNAP, setid, alg, **args)  # type: ignore[arg-type]


def test_synthetic_calls_are_plausible() -> None:
    import random

    c = synthetic_call(7, random.Random(1))
    assert c.id == 7 and c.method == "INVITE" and c.request_uri.startswith("sip:+49")
    assert c.from_uri.startswith("sip:") and c.call_id.endswith("@sim.invalid")


def test_format_result() -> None:
    text = format_result(SimulationResult(1, 9, 4, {"sip:a": 3, "sip:b": 1}))
    assert text.splitlines() == [
        "set 1, algorithm 9 weight, 4 calls",
        "destination     calls    share",
        "sip:a               3   75.00%",
        "sip:b               1   25.00%",
    ]


# -- the command line --------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="b2bua")
    add_dispatcher_commands(p.add_subparsers(dest="command"))
    return p


def run_cli(*argv: str) -> tuple[int, str, str]:
    args = parser().parse_args(["dispatcher", "simulate", *argv])
    out, err = io.StringIO(), io.StringIO()
    code = args.func(args, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_with_a_list_file(tmp_path: Path) -> None:
    lst = tmp_path / "dispatcher.list"
    lst.write_text("1 sip:gw1.example 0 0 weight=75\n1 sip:gw2.example 0 0 weight=25\n")
    code, out, err = run_cli("--list-file", str(lst), "--set", "1", "--alg", "weight", "--calls", "2000")
    assert (code, err) == (0, "")
    lines = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert float(lines["sip:gw1.example"][2].rstrip("%")) == pytest.approx(75, abs=2)


def test_cli_reads_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "d.list").write_text("1 sip:a\n1 sip:b\n1 sip:c\n")
    cfg = tmp_path / "config.toml"
    cfg.write_text('[plugins.dispatcher]\nlist_file = "d.list"\nuse_default = true\n')
    code, out, _ = run_cli("-c", str(cfg), "--set", "1", "--alg", "4", "--calls", "30", "--down", "sip:b")
    assert code == 0
    # array order c, b, a; a is the use_default reserve; b down: everything to c
    rows = [line.split() for line in out.splitlines()[2:]]
    assert rows == [["sip:c", "30", "100.00%"], ["sip:b", "0", "0.00%"], ["sip:a", "0", "0.00%"]]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--set", "1", "--alg", "fastest"), "unknown algorithm 'fastest'"),
        (("--set", "1", "--alg", "4", "-c", "/nonexistent/config.toml"), "cannot read"),
        (("--set", "1", "--alg", "4", "--list-file", "/nonexistent/d.list"), "/nonexistent/d.list"),
    ],
)
def test_cli_errors_exit_non_zero_with_a_message(argv: tuple[str, ...], message: str) -> None:
    code, out, err = run_cli(*argv)
    assert code == 1 and out == ""
    assert err.startswith("b2bua dispatcher simulate: ") and message in err


def test_without_c_it_reads_config_toml_here_and_creates_nothing(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    (work / "config.toml").write_text('[plugins.dispatcher]\nlist_file = "d.list"\n')
    (work / "d.list").write_text("1 sip:a 0 0 weight=60\n1 sip:b 0 0 weight=40\n")
    monkeypatch.chdir(work)
    code, out, err = run_cli("--set", "1", "--alg", "9", "--calls", "1000")
    assert (code, err) == (0, "")
    assert {line.split()[0] for line in out.splitlines()[2:]} == {"sip:a", "sip:b"}
    assert sorted(p.name for p in work.iterdir()) == ["config.toml", "d.list"]

    # no config here: --list-file is needed, and nothing is created either
    monkeypatch.chdir(elsewhere)
    code, out, err = run_cli("--set", "1", "--alg", "4")
    assert (code, out) == (1, "")
    assert err == "b2bua dispatcher simulate: no ./config.toml here: give -c FILE or --list-file FILE\n"
    code, _, _ = run_cli("--set", "1", "--alg", "4", "--calls", "10", "--list-file", str(work / "d.list"))
    assert code == 0
    assert list(elsewhere.iterdir()) == []


def test_a_missing_sqlite_database_is_an_error_not_created(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[plugins.dispatcher]\ndb_url = "sqlite:///dispatcher.db"\n')
    code, out, err = run_cli("-c", str(cfg), "--set", "1", "--alg", "4")
    assert (code, out) == (1, "")
    assert f"sqlite:///{tmp_path}/dispatcher.db: no such database file (a read-only command creates nothing)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]


def test_a_database_is_read_relative_to_the_config_and_left_unchanged(tmp_path: Path) -> None:
    from plugins.dispatcher.sqlstore import SqlStore

    with SqlStore(f"sqlite:///{tmp_path}/dispatcher.db") as store:
        store.ensure_schema()
        store.add(1, "sip:a")
        store.add(1, "sip:b")
    before = (tmp_path / "dispatcher.db").read_bytes()
    cfg = tmp_path / "config.toml"
    cfg.write_text('[plugins.dispatcher]\ndb_url = "sqlite:///dispatcher.db"\n')
    code, out, err = run_cli("-c", str(cfg), "--set", "1", "--alg", "4", "--calls", "10")
    assert (code, err) == (0, "")
    assert [line.split()[:2] for line in out.splitlines()[2:]] == [["sip:b", "5"], ["sip:a", "5"]]
    assert (tmp_path / "dispatcher.db").read_bytes() == before


def test_weight_problems_are_warned_about(tmp_path: Path) -> None:
    lst = tmp_path / "dispatcher.list"
    lst.write_text("1 sip:a 0 0 weight=50\n1 sip:b 0 0 weight=50\n1 sip:new\n")
    code, out, err = run_cli("--list-file", str(lst), "--set", "1", "--alg", "9", "--calls", "100")
    assert code == 0
    assert err == ("warning: set 1: weighted, but sip:new has no weight; algorithm 9 would send sip:new 100 %,"
                   " sip:b 0 %, sip:a 0 %\n")
    assert [line.split()[:2] for line in out.splitlines()[2:]] == [["sip:new", "100"], ["sip:b", "0"], ["sip:a", "0"]]


def test_dispatcher_subparsers_accept_more_commands() -> None:
    p = argparse.ArgumentParser(prog="b2bua")
    sub = add_dispatcher_commands(p.add_subparsers(dest="command"))
    sub.add_parser("extra").set_defaults(func=lambda args: 0)
    assert p.parse_args(["dispatcher", "extra"]).func(None) == 0
    with pytest.raises(SystemExit):
        p.parse_args(["dispatcher"])  # a subcommand is required


def test_flag_constants_match_kamailio() -> None:
    assert int(DestFlags.INACTIVE) == 1  # the CLI's --down means I
