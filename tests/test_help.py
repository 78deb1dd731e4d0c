"""Every subcommand has a description and every option a help line; the defaults shown are the real ones."""
import argparse
import contextlib
import io

import pytest

from numpy_densenet.cli import main, make_parser


def subcommands():
    parser = make_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def options(parser):
    return [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]


def help_text(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv + ["--help"]) == 0
    return out.getvalue()


def test_the_subcommands_are_all_there():
    assert set(subcommands()) >= {"train", "evaluate", "predict", "gradcheck", "summary", "convert", "inspect",
                                  "explain"}


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_subcommand_has_a_description_and_every_option_a_help_line(name):
    parser = subcommands()[name]
    assert parser.description and len(parser.description) > 30, f"{name} has no description"
    missing = [a.option_strings or [a.dest] for a in options(parser) if not a.help or a.help == argparse.SUPPRESS]
    assert not missing, f"{name}: no help for {missing}"
    text = help_text([name])
    assert "default: None" not in text and "(default None)" not in text, text


def test_train_help_gives_the_dataset_aware_defaults():
    text = " ".join(help_text(["train"]).split())
    assert "16 on digits" in text                                        # --depth
    assert "30 on digits, 300 otherwise" in text                         # --epochs
    assert "--val-fraction" in text and "default 0.1" in text
    assert "--overwrite" in text and "--resume" in text


def test_help_defaults_are_the_parsers_defaults():
    """Where a help line states '(default X)' for a plain value, the parser's default is X."""
    import re
    import argparse
    import dataclasses

    from numpy_densenet.training import TrainConfig
    config = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    checked = 0
    for name, parser in subcommands().items():
        for action in options(parser):
            m = re.search(r"\(default:? ([-\w.]+)\)", action.help or "")
            default = action.default
            if default == argparse.SUPPRESS:       # train records only the options given: TrainConfig's default
                default = config.get(action.dest)
            if m and default is not None and not isinstance(default, bool):
                checked += 1
                assert str(default) == m.group(1) or float(default) == float(m.group(1)), \
                    (name, action.option_strings, default, action.help)
    assert checked >= 10
