"""The command line is parsed by the parser of the command it names alone (cli/main.py,
``command_in``): that must give exactly what the whole parser gives, or fall back to it."""

from __future__ import annotations

import argparse
import importlib

import pytest

# The module, not the package's ``main`` (the entry point, a function of the same name).
main = importlib.import_module("procdevices.cli.main")

# Command lines as users and scripts write them, global options before and after the command,
# and lines the partial parser must not take (an abbreviated option, help, no command).
ARGVS = [
    ("up", ["up"]),
    ("up", ["up", "-c", "topo.toml", "--metrics", "127.0.0.1:9100"]),
    ("up", ["-c", "topo.toml", "up"]),
    ("up", ["-ctopo.toml", "up", "--host", "a"]),
    ("up", ["--config=topo.toml", "--log-level", "debug", "up"]),
    ("status", ["-c", "up", "status"]),  # a topology file named "up"
    ("stats", ["--run-dir", "status", "stats", "broker", "--json"]),
    ("events", ["--log-format", "json", "--log-level=warning", "events", "--json"]),
    ("status", ["status", "--all", "--timeout", "2"]),
    ("stop", ["stop", "broker.1", "--no-wait", "--host", "b"]),
    ("scale", ["scale", "broker", "3"]),
    ("logs", ["logs", "broker", "-n", "5", "-f"]),
    ("tap", ["tap", "broker", "--run-dir", "/tmp/x"]),
    ("supervisord-conf", ["supervisord-conf", "--program"]),
    ("completion", ["completion", "bash"]),
    ("endpoints", ["endpoints", "--json"]),
]
FALLBACK = [
    [],
    ["--conf", "topo.toml", "up"],  # argparse's abbreviation: only the whole parser knows it
    ["--help"],
    ["--version"],
    ["bogus"],
    ["--json", "status"],
]


@pytest.mark.parametrize(("command", "argv"), ARGVS, ids=[" ".join(argv) for _, argv in ARGVS])
def test_the_named_commands_parser_parses_as_the_whole_one(command: str, argv: list[str]) -> None:
    assert main.command_in(argv) == command
    partial, only = main.build_parser(prog="procdevices", only=command)
    whole, every = main.build_parser(prog="procdevices")
    assert list(only) == [command]
    assert len(every) == len(main.COMMANDS)
    parsed, extra = partial.parse_known_args(argv)
    assert extra == []  # every option of these lines is known: none was lost from a command
    assert (parsed, extra) == whole.parse_known_args(argv)
    assert only[command].format_help() == every[command].format_help()


@pytest.mark.parametrize("argv", FALLBACK, ids=" ".join)
def test_anything_else_gets_the_whole_parser(argv: list[str]) -> None:
    assert main.command_in(argv) is None


def test_every_handler_and_option_module_resolves() -> None:
    # The table names handlers as strings: a rename must fail here, not at a user's prompt.
    _, commands = main.build_parser(prog="procdevices")
    for command in main.COMMANDS:
        assert callable(main.handler_of(command.name, command.handler))
        assert commands[command.name].get_default("handler") == command.handler
    # The device commands go to the device's host (cli/cluster.py).
    assert main.handler_of("stats", "cli.client:stats").__qualname__ == "routed.<locals>.run"
    assert main.handler_of("logs", "cli.client:logs").__qualname__ == "logs"


def test_the_global_options_before_a_command_are_the_parsers() -> None:
    # command_in skips their values: an option added to _global_options but not there would
    # only cost the whole parser, but it must not go unnoticed.
    parser = argparse.ArgumentParser(add_help=False)
    main._global_options(parser, suppress=False)
    valued = {option for action in parser._actions if action.nargs != 0 for option in action.option_strings}
    assert valued == set(main._GLOBAL_VALUED)


def test_a_bad_option_of_the_command_is_reported_by_its_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main.main(["scale", "broker", "many"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "scale [-h]" in err  # the command's own usage
    assert "argument replicas: invalid int value: 'many'" in err


def _namespace(argv: list[str]) -> argparse.Namespace:
    parser, _ = main.build_parser(prog="procdevices", only=main.command_in(argv))
    parsed: argparse.Namespace = parser.parse_args(argv)
    return parsed


def test_options_before_and_after_the_command_agree() -> None:
    assert _namespace(["-c", "a.toml", "up"]).config == _namespace(["up", "-c", "a.toml"]).config == "a.toml"


@pytest.mark.parametrize("columns", ["57", "200", "", "0", "-3", "wide"])
def test_help_is_as_wide_as_argparse_makes_it(monkeypatch: pytest.MonkeyPatch, columns: str) -> None:
    # The parsers size their formatters themselves (main.terminal_columns), so that argparse
    # does not import shutil: the help must be what argparse's own sizing writes.
    monkeypatch.setenv("COLUMNS", columns)
    parser, commands = main.build_parser("procdevices", only="up")
    ours = parser.format_help(), commands["up"].format_help()
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    commands["up"].formatter_class = argparse.HelpFormatter
    assert ours == (parser.format_help(), commands["up"].format_help())
