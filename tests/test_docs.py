"""The documentation as a user pastes it: README's Python examples run, one block at a time, on the bundled models,
and every documented `hyperinverter` command line is one the command line takes."""

import re
import shlex
import shutil
from pathlib import Path

import pytest

from hyperinverter.catalogue import BUNDLED_DIR
from hyperinverter.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# What the examples read that a user brings, and the bundled files that stand in for it.
STAND_INS = {"stylegan2-ffhq-config-f.pkl": BUNDLED_DIR / "faces-64" / "generator"}
USER_IMAGES = {"shoe.png": "fashion-32/examples/000000.png", "shirt.png": "fashion-32/examples/000001.png"}


def _blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(encoding="utf-8"), re.DOTALL)


PYTHON_BLOCKS = _blocks(README, "python")


def test_readme_has_python_examples():
    assert len(PYTHON_BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_readme_python_example_runs(index, tmp_path, monkeypatch):
    # Each block alone, in a fresh namespace: a user pastes one (a block that leaned on an earlier one's imports, or
    # asked for CUDA on a machine without it, failed as pasted).
    code = PYTHON_BLOCKS[index]
    for name, path in STAND_INS.items():
        code = code.replace(f'"{name}"', repr(str(path)))
    for name, source in USER_IMAGES.items():
        shutil.copy(BUNDLED_DIR / source, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    # (our own README's code)
    exec(compile(code, f"README.md, Python block {index + 1}", "exec"), {"__name__": "__readme__"})  # noqa: S102


def _documented_command_lines():
    for doc in [README, *sorted((ROOT / "docs").rglob("*.md"))]:
        for block in _blocks(doc, "bash"):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                command = re.match(r"\s*(?:python -m )?hyperinverter (.*)", line)
                if command and "..." not in line and "<" not in line:  # (placeholders: not meant to run as written)
                    yield doc.relative_to(ROOT), shlex.split(command.group(1), comments=True)


def test_documented_command_lines_parse(capsys):
    parser = build_parser()
    lines = list(_documented_command_lines())
    assert len(lines) > 40
    for doc, args in lines:
        try:
            parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"{doc}: `hyperinverter {shlex.join(args)}`: {capsys.readouterr().err.strip()}")


def test_main_s_one_parser_reads_each_command_line_alone():
    # main() parses with one parser per process (built once: 25-45 ms a call): an earlier command's repeated
    # options, appended to a list default, must not reach the next command.
    from hyperinverter.cli.main import _shared_parser

    line = ["invert", "a.png", "--model", "m", "--out", "o"]
    assert len(_shared_parser().parse_args([*line, "--option", "steps=3", "--option", "lr=0.1"]).option) == 2
    assert _shared_parser().parse_args(line).option == [] and _shared_parser() is _shared_parser()


def test_readme_says_how_to_install_the_package_with_its_extras():
    # README had only `make` targets: nothing said which Python and torch the package takes, that a GPU-less user
    # must install torch's CPU build first, or what each extra adds.
    tomllib = pytest.importorskip("tomllib")  # (Python 3.11+)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    section = re.search(r"### Into an environment of your own\n(.*?)\n##", README.read_text(encoding="utf-8"),
                        re.DOTALL)
    assert section is not None, "README has no section on installing the package"
    text = " ".join(section.group(1).split())
    (torch_requirement,) = [d for d in project["dependencies"] if re.match(r"torch\b", d)]
    assert f"Python {project['requires-python'].removeprefix('>=')} or later" in text
    assert f"PyTorch {torch_requirement.removeprefix('torch>=')} or later" in text
    assert "CPU build" in text
    for extra in project["optional-dependencies"]:
        assert f"`{extra}`" in text, f"README's install section does not name the extra {extra!r}"


def test_help_of_the_package_shows_a_working_example(tmp_path, monkeypatch):
    # help(hyperinverter) showed one line and the module list: the entry points load lazily, so pydoc never
    # showed InversionPipeline, and nothing said how to start.
    import pydoc

    import hyperinverter

    assert "InversionPipeline.from_pretrained(" in pydoc.render_doc(hyperinverter)
    code = "\n".join(line[4:] for line in hyperinverter.__doc__.splitlines() if line.startswith("    "))
    shutil.copy(BUNDLED_DIR / "faces-64" / "examples" / "000000.png", tmp_path / "photo.png")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "hyperinverter's docstring", "exec"), {"__name__": "__doc_example__"})  # noqa: S102  (ours)
    assert (tmp_path / "photo.safetensors").is_file()


def test_the_tests_the_docs_name_exist():
    # docs/training.md named `test_torchrun_two_ranks_equal_one_process`, a test renamed since: a reader looking
    # for the evidence of a claim found nothing under that name.
    defined = set()
    for path in (ROOT / "tests").rglob("*.py"):
        defined.update(re.findall(r"^\s*def (test_\w+)", path.read_text(encoding="utf-8"), re.MULTILINE))
    for doc in [README, *sorted((ROOT / "docs").rglob("*.md"))]:
        named = set(re.findall(r"`(test_\w+)`", doc.read_text(encoding="utf-8")))
        assert not named - defined, f"{doc.relative_to(ROOT)} names tests that do not exist: {sorted(named - defined)}"


def test_every_option_s_help_names_its_default():
    # `benchmark --help` showed no default for --images, --optimisation-images or --batch-size (64, 16, 16), nor did
    # fifteen other options: a user had to read the code to know what a run would do.
    import argparse

    def options(parser, command):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from options(sub, f"{command} {name}".strip())
            elif action.option_strings and action.help != argparse.SUPPRESS:
                yield command, action

    silent = [f"{command} {action.option_strings[-1]} (default {action.default})"
              for command, action in options(build_parser(), "")
              if action.default not in (None, False, [], argparse.SUPPRESS)
              and not isinstance(action, argparse._HelpAction)
              and "default" not in (action.help or "") and str(action.default) not in (action.help or "")]
    assert not silent, silent
