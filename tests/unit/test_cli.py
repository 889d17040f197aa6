"""The ``b2bua`` command line: help on every subcommand, ``$B2BUA_CONFIG``, ``check-config``
reporting every error, shell completion.

Commands that set up logging for the whole process run in a child process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from b2bua.cli import build_parser, config_options, subcommands

ROOT = Path(__file__).resolve().parents[2]


def b2bua(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    child_env = {k: v for k, v in os.environ.items() if k != "B2BUA_CONFIG"}
    child_env["PYTHONPATH"] = str(ROOT)
    child_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "b2bua", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env=child_env)


@pytest.fixture
def no_env_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("B2BUA_CONFIG", raising=False)


def test_every_subcommand_has_a_help_line_and_a_description(no_env_config: None) -> None:
    found = list(subcommands(build_parser()))
    names = {" ".join(path) for path, _, _ in found}
    # the host's own and the built-in plugins' subcommands are all walked
    assert {"run", "check-config", "completion", "rpc", "dispatcher", "dispatcher add", "dispatcher reload"} <= names
    missing = [" ".join(path) for path, parser, help_line in found if not (help_line and parser.description)]
    assert missing == [], f"subcommands without a help line or a --help description: {missing}"


def test_run_help_describes_the_command(no_env_config: None, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["run", "--help"])
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # as one line, whatever the terminal width
    assert "Run the B2BUA in the foreground until SIGTERM or SIGINT" in out
    assert "$B2BUA_CONFIG, else ./config.toml" in out


COMMANDS = [
    ["run"], ["check-config"], ["rpc", "core.version"], ["dispatcher", "list"], ["dispatcher", "add", "1", "sip:x"],
    ["dispatcher", "simulate", "--set", "1", "--alg", "4"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_b2bua_config_is_every_commands_default(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("B2BUA_CONFIG", "/etc/b2bua/site.toml")
    assert build_parser().parse_args(argv).config == "/etc/b2bua/site.toml"
    # an explicit -c still wins
    assert build_parser().parse_args([*argv, "-c", "mine.toml"]).config == "mine.toml"


def test_without_b2bua_config_the_defaults_stay(no_env_config: None) -> None:
    parser = build_parser()
    assert parser.parse_args(["run"]).config == "config.toml"
    assert parser.parse_args(["check-config"]).config == "config.toml"
    assert parser.parse_args(["rpc", "core.version"]).config is None  # ./config.toml when there is one


def test_every_config_option_is_found(no_env_config: None) -> None:
    parser = build_parser()
    with_config = {" ".join(path) for path, child, _ in subcommands(parser)
                   if any("--config" in a.option_strings for a in child._actions)}
    assert len(list(config_options(parser))) == len(with_config) >= 6


def test_check_config_reports_every_error_with_its_toml_path(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        '[sip]\nmax_calls = "many"\nrtp_port = 70000\n'
        '[log]\nlevel = "LOUD"\n'
        '[nonsense]\n'
        '[plugins]\nenabled = ["dispatcher", "failover"]\n'
        '[plugins.dispatcher]\nping_interval = "x"\nbogus = 1\n'
        '[plugins.failover]\nnot_a_key = true\n'
    )
    done = b2bua("check-config", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    lines = done.stderr.splitlines()
    expected = [
        "error: config.toml: unknown section [nonsense]",
        "error: config.toml: [sip] max_calls: expected an integer, got 'many'",
        "error: config.toml: [sip] rtp_port: must be 1024-65534, got 70000",
        "error: config.toml: [log] level: 'LOUD' is not one of",
        "error: config.toml: [plugins.dispatcher]: unknown key 'bogus'",
        "error: config.toml: [plugins.dispatcher] ping_interval: expected a number, got 'x'",
        "error: config.toml: [plugins.failover]: unknown key 'not_a_key'",
    ]
    for fragment in expected:
        assert sum(line.startswith(fragment) for line in lines) == 1, (fragment, done.stderr)
    assert lines[-1] == "config.toml: 7 errors"
    assert len(lines) == 8


@pytest.mark.parametrize(("file", "reason"), [
    ("typo/b2bua.log", "folder {tmp}/typo does not exist"),
    ("/proc/b2bua.log", "cannot open /proc/b2bua.log: No such file or directory"),
], ids=["missing-folder", "cannot-open"])
def test_run_refuses_a_log_file_it_cannot_write(tmp_path: Path, file: str, reason: str) -> None:
    # it was a Python traceback and exit 1 (cannot open), or a folder created without a word
    # (loguru makes the missing ones): logs going somewhere nobody looks
    (tmp_path / "config.toml").write_text(f'[log]\nfile = "{file}"\n[control]\nsocket = ""\n')
    done = b2bua("run", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"error: config.toml: [log] file: {reason.format(tmp=tmp_path)}\n"
    assert not (tmp_path / "typo").exists()


def test_check_config_reads_b2bua_config(tmp_path: Path) -> None:
    site = tmp_path / "etc" / "site.toml"
    site.parent.mkdir()
    site.write_text("[sip]\nmax_calls = 3\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = b2bua("check-config", cwd=elsewhere, env={"B2BUA_CONFIG": str(site)})
    assert (done.returncode, done.stdout) == (0, f"{site}: OK (plugins: none)\n"), done.stderr
    # a named file that is missing is an error, not a silent fall-back to ./config.toml
    (elsewhere / "config.toml").write_text("")
    done = b2bua("check-config", cwd=elsewhere, env={"B2BUA_CONFIG": str(tmp_path / "gone.toml")})
    assert done.returncode == 2 and "gone.toml: cannot read" in done.stderr


def test_completion_script_completes_subcommands_in_bash(tmp_path: Path) -> None:
    done = b2bua("completion", "bash", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    script = tmp_path / "b2bua.bash"
    script.write_text(done.stdout)
    bash = shutil.which("bash")
    assert bash is not None, "bash is needed to check the completion script"

    def complete(*words: str) -> list[str]:
        probe = (f'source {script}; COMP_WORDS=(b2bua {" ".join(words)}); COMP_CWORD={len(words)}; '
                 '_shtab_b2bua; printf "%s\\n" "${COMPREPLY[@]}"')
        return subprocess.run([bash, "-c", probe], capture_output=True, text=True, timeout=30,
                              check=True).stdout.split()

    assert complete("ch") == ["check-config"]
    assert complete("dispatcher", "set") == ["set-state"]
    assert "--verbose" in complete("run", "--")


def test_completion_for_an_unknown_shell_is_a_usage_error(tmp_path: Path) -> None:
    done = b2bua("completion", "fish", cwd=tmp_path)
    assert done.returncode == 2 and "invalid choice: 'fish'" in done.stderr


@pytest.mark.parametrize("command", [
    pytest.param(["dispatcher", "simulate", "--list-file", "big.list", "--set", "1", "--alg", "4", "--calls", "100"],
                 id="simulate"),
    pytest.param(["dispatcher", "show", "-c", "config.toml"], id="show"),
    pytest.param(["dispatcher", "show", "--json", "-c", "config.toml"], id="show-json"),
])
def test_a_reader_that_goes_away_ends_the_command_quietly(command: list[str], tmp_path: Path) -> None:
    """``b2bua dispatcher simulate ... | head -1``: exit 141 (128 + SIGPIPE, as ls or git there),
    no BrokenPipeError traceback, not even from Python's flush at exit."""
    (tmp_path / "big.list").write_text("".join(f"1 sip:10.0.{i // 250}.{i % 250 + 1}:5060\n" for i in range(5000)))
    (tmp_path / "config.toml").write_text('[plugins]\nenabled = ["dispatcher"]\n'
                                          '[plugins.dispatcher]\nlist_file = "big.list"\n')
    env = {k: v for k, v in os.environ.items() if k != "B2BUA_CONFIG"} | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "b2bua", *command], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()  # more than a pipe holds follows: the command is still writing
    proc.stdout.close()
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, err
    assert first.strip() and err == ""


def test_a_table_of_a_plugin_not_enabled_is_reported(tmp_path: Path) -> None:
    # [plugins.failover] without "failover" in enabled was silently ignored: a failover policy
    # the operator believes in and calls that do not fail over
    (tmp_path / "config.toml").write_text(
        '[plugins]\nenabled = ["plugins.dispatcher.plugin:DispatcherPlugin"]\n'
        '[plugins.dispatcher]\nlist_file = "d.list"\n'
        '[plugins.failover]\nmax_attempts = 2\n'
        '[plugins.mine]\nanything = 1\n'
    )
    (tmp_path / "d.list").write_text("1 sip:192.0.2.1:5060\n")
    done = b2bua("check-config", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "[plugins." in line]
    # the dispatcher, enabled by module path, reads its table; nobody installed is called "mine"
    assert len(warnings) == 1, done.stderr
    assert ("config.toml: [plugins.failover] is set, but 'failover' is not in [plugins] enabled: "
            "these settings are not used") in warnings[0]
