"""One flag style: every script defines its flags in snake_case (--val_data), lists only that style in
--help, and still accepts the kebab spelling (--val-data) of each flag; a mistyped flag still fails."""
import importlib.util
import re
import sys

import pytest

import util
from conftest import ROOT

# script: (a valid command line, a flag in kebab spelling with its value, the attribute it sets);
# speculative.py, summarize.py and bench/aot.py have no flag of two words
CLIS = {
    "train.py": (["--size", "tiny-20k", "--data", "d"], ["--max-iters", "7"], "max_iters"),
    "evaluate.py": (["--ckpt", "a.pt", "--out", "o"], ["--val-data", "d"], "val_data"),
    "sample.py": (["--ckpt", "a.pt"], ["--max-new-tokens", "7"], "max_new_tokens"),
    "export_hf.py": (["--ckpt", "a.pt", "--out", "o"], ["--tokenizer-dir", "t"], "tokenizer_dir"),
    "flops.py": ([], ["--gpu-mem", "40"], "gpu_mem"),
    "expand.py": (["--src", "a.pt", "--size", "b", "--out", "o"], ["--optimizer-state"], "optimizer_state"),
    "bench/gpu.py": ([], ["--no-model-compile"], "model_compile"),
    "bench/cpu.py": ([], ["--cpu-modes", "t1"], "cpu_modes"),
    "bench/aot.py": ([], None, None),
    "data/prepare.py": (["--out", "o"], ["--val-tokens", "7"], "val_tokens"),
    "experiments/speculative.py": (["--run", "r"], None, None),
    "experiments/summarize.py": ([], None, None),
}


class Captured(Exception):
    """Raised instead of parsing, carrying the script's parser out of its main()."""


def parser_of(script: str, monkeypatch) -> util.ArgumentParser:
    """The ArgumentParser that `script`'s main() builds (scripts without a parse_args(argv) build it
    inside main): load the module, stop main() at its first parse and take the parser."""
    name = "cli_" + re.sub(r"\W", "_", script)
    spec = importlib.util.spec_from_file_location(name, ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def capture(self, args=None, namespace=None):
        raise Captured(self)

    monkeypatch.setattr(util.ArgumentParser, "parse_known_args", capture)
    monkeypatch.setattr(sys, "argv", [script])
    with pytest.raises(Captured) as e:
        (getattr(module, "parse_args", None) or module.main)()
    monkeypatch.undo()
    return e.value.args[0]


@pytest.mark.parametrize("script", CLIS)
def test_help_lists_one_style_and_kebab_is_an_alias(script, monkeypatch):
    p = parser_of(script, monkeypatch)
    flags = [s for a in p._actions for s in a.option_strings if s.startswith("--")]
    assert flags and not [f for f in flags if "-" in f[2:]], flags
    assert not re.findall(r"--[a-z]\w*-\w", p.format_help())  # nor in the help text and examples
    base, kebab, attr = CLIS[script]
    if kebab is None:
        return
    snake = [util.snake_flag(kebab[0])] + kebab[1:]
    assert snake[0] != kebab[0] and "-" not in snake[0][2:]
    got, want = p.parse_args(base + kebab), p.parse_args(base + snake)
    assert getattr(got, attr) == getattr(want, attr) != getattr(p.parse_args(base), attr)


@pytest.mark.parametrize("script", [s for s in CLIS if CLIS[s][1]])
def test_a_mistyped_flag_still_fails(script, monkeypatch, capsys):
    p = parser_of(script, monkeypatch)
    base, kebab, _ = CLIS[script]
    typo = kebab[0][:-2] + kebab[0][-1] + kebab[0][-2]  # the last two letters swapped
    with pytest.raises(SystemExit) as e:
        p.parse_args(base + [typo] + kebab[1:])
    assert e.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


@pytest.mark.fast
def test_no_prefix_negates_in_both_spellings():
    p = util.ArgumentParser()
    p.add_argument("--model_compile", action=__import__("argparse").BooleanOptionalAction, default=True)
    assert "--no_model_compile" in p.format_help() and "--no-" not in p.format_help()
    for argv in (["--no_model_compile"], ["--no-model-compile"], ["--no-model_compile"]):
        assert p.parse_args(argv).model_compile is False
    assert p.parse_args(["--model-compile"]).model_compile is True


def test_values_after_the_flag_keep_their_dashes():
    p = util.ArgumentParser()
    p.add_argument("--prompt_text")
    p.add_argument("rest", nargs="*")
    assert p.parse_args(["--prompt-text=a-b--c-d"]).prompt_text == "a-b--c-d"
    assert p.parse_args(["--", "--not-a-flag"]).rest == ["--not-a-flag"]
