"""The front door holds: every link in README.md and docs/ resolves, every command their code blocks show
exists and answers --help, and the plugin code they show is the example plugin that the suite installs."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "results" / "cpu" / "README.md",
         ROOT / "results" / "scale" / "README.md",
         ROOT / "experiments" / "README.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a Markdown page's headings."""
    out = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return out


def code_blocks(page: Path) -> list[str]:
    return re.findall(r"```[a-z]*\n(.*?)```", page.read_text(), re.S)


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    first_screen = lines[:30]  # the answer: the width study's table and figure
    assert any("scale.png" in line for line in first_screen)
    assert any(line.startswith("| ResNet-9 ×1.0") for line in first_screen)  # the paper's network has a row
    assert any("headline.png" in line for line in lines)  # every method, below it


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(target)
    assert broken == []


def commands() -> list[list[str]]:
    """The distinct tools the pages' code blocks call, as --help invocations."""
    found = set()
    for page in PAGES:
        for block in code_blocks(page):
            for piece in (p for line in block.splitlines() for p in re.split(r"&&|;", line.split("#")[0])):
                line = piece.strip()
                if m := re.match(r"python -m ([\w.]+)", line):
                    found.add(("-m", m.group(1)))
                elif m := re.match(r"python (run_all\.py|experiments/\w+\.py)", line):
                    found.add(("script", m.group(1)))
                elif m := re.match(r"scnn-bench (\w[\w-]*)", line):
                    found.add(("-m", "benchmarks.cli", m.group(1)))
                elif m := re.match(r"bash ((?:experiments|scripts)/\w+\.sh)", line):
                    found.add(("bash", m.group(1)))
    return sorted(found)


@pytest.mark.slow
@pytest.mark.parametrize("command", commands(), ids=lambda c: " ".join(c))
def test_every_command_shown_exists(command):
    kind, *rest = command
    if kind == "bash":
        assert (ROOT / rest[0]).is_file()
        assert subprocess.run(["bash", "-n", str(ROOT / rest[0])]).returncode == 0
        return
    argv = [sys.executable, *(["-m", *rest] if kind == "-m" else rest), "--help"]
    # a hang guard, not a speed check: importing torch on a loaded host can take minutes
    p = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr


def test_the_plugin_code_shown_is_the_example_plugin():
    example = (ROOT / "examples" / "plugin" / "my_method" / "__init__.py").read_text()
    body = example[example.index("from dataclasses"):]
    readme = [b for b in code_blocks(ROOT / "README.md") if "class MyMethod" in b]
    guide = [b for b in code_blocks(ROOT / "docs" / "plugins.md") if "class MyMethod" in b]
    assert readme == [body]
    assert len(guide) == 1 and guide[0].removeprefix("# examples/plugin/my_method/__init__.py\n") == example
    assert len([line for line in body.splitlines() if line.strip()]) <= 30  # the README's promise
