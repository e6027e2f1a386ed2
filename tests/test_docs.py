"""The documentation: README.md stays a front page, its links resolve, and the commands it shows exist.

- README.md has at most 250 lines; the rest lives in docs/.
- Every relative Markdown link or image in README.md and docs/*.md points to an existing file, and its
  `#anchor`, if any, to a heading of that file (GitHub's anchor rule).
- Every `python SCRIPT.py ...` and `python -m MODULE [SUBCOMMAND] ...` in README.md's code blocks runs with
  `--help` and exits 0. The commands are parsed from the README, not listed here, so a README that names a
  command that does not exist fails. The same commands in docs/*.md code blocks must name an existing script
  or module (not run: that would take minutes on 2 cores).
"""
from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 250

FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
SUBCOMMAND = re.compile(r"^[a-z][a-z0-9_-]*$")


def split_fences(text: str) -> tuple[list[str], list[list[str]]]:
    """(lines outside fenced code blocks, the lines of each code block)."""
    prose: list[str] = []
    blocks: list[list[str]] = []
    block: list[str] | None = None
    for line in text.splitlines():
        if FENCE.match(line):
            if block is None:
                block = []
            else:
                blocks.append(block)
                block = None
        elif block is None:
            prose.append(line)
        else:
            block.append(line)
    return prose, blocks


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, -1, -2 for repeats."""
    prose, _ = split_fences(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for line in prose:
        m = HEADING.match(line)
        if not m:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(2))  # a link in a heading keeps its text
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(path: Path) -> list[str]:
    """Link targets outside code blocks and inline code."""
    prose, _ = split_fences(path.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", "\n".join(prose))
    return LINK.findall(text)


def commands(path: Path) -> list[tuple[str, ...]]:
    """The distinct `python` invocations in the file's code blocks, as argv after `python`, without flags:
    ("jobs/train_smtc.py",), ("-m", "shards", "pack"), ("-m", "shards.synth"), ..."""
    _, blocks = split_fences(path.read_text(encoding="utf-8"))
    found: list[tuple[str, ...]] = []
    for block in blocks:
        logical: list[str] = []
        for line in block:  # join backslash continuations
            if logical and logical[-1].endswith("\\"):
                logical[-1] = logical[-1][:-1] + " " + line
            else:
                logical.append(line)
        for line in logical:
            try:
                words = shlex.split(line, comments=True)
            except ValueError:  # console output with an unbalanced quote
                words = line.split()
            for i, word in enumerate(words):
                if word not in ("python", "python3"):
                    continue
                rest = words[i + 1:]
                if rest and rest[0].endswith(".py"):
                    cmd: tuple[str, ...] = (rest[0],)
                elif len(rest) >= 2 and rest[0] == "-m":
                    sub = rest[2:3] if len(rest) > 2 and SUBCOMMAND.match(rest[2]) else []
                    cmd = ("-m", rest[1], *sub)
                else:
                    continue
                if cmd not in found:
                    found.append(cmd)
    return found


def exists(cmd: tuple[str, ...]) -> bool:
    if cmd[0] != "-m":
        return (ROOT / cmd[0]).is_file()
    module = ROOT / Path(*cmd[1].split("."))
    if module.with_suffix(".py").is_file() or (module / "__main__.py").is_file():
        return True
    top = ROOT / cmd[1].split(".")[0]
    if top.is_dir() or top.with_suffix(".py").is_file():
        return False  # a module of this repository that is not there
    return importlib.util.find_spec(cmd[1]) is not None


def test_readme_is_a_front_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines (at most {MAX_README_LINES}): move details into docs/")
    assert DOCS, "docs/*.md is missing"


def test_relative_links_resolve():
    problems = []
    for page in [README, *DOCS]:
        for target in links(page):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            name = f"{page.relative_to(ROOT)}: {target}"
            if not dest.exists():
                problems.append(f"{name}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{name}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}")
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_readme_shows_the_five_commands():
    shown = {" ".join(c) for c in commands(README)}
    for what, pattern in [("pack", r"-m shards pack"), ("train", r"jobs/train_\w+\.py"),
                          ("evaluate", r"jobs/eval_\w+\.py"), ("score", r"-m raytrain\.eval score"),
                          ("sweep", r"jobs/tune_\w+\.py")]:
        assert any(re.search(pattern, c) for c in shown), f"README.md shows no {what} command: {sorted(shown)}"


def test_docs_commands_exist():
    missing = [f"{page.relative_to(ROOT)}: python {' '.join(c)}"
               for page in DOCS for c in commands(page) if not exists(c)]
    assert not missing, "docs name commands that do not exist:\n" + "\n".join(missing)


def _help(cmd: tuple[str, ...]) -> tuple[tuple[str, ...], int, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    p = subprocess.run([sys.executable, *cmd, "--help"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=180)
    return cmd, p.returncode, p.stdout + p.stderr


def test_readme_commands_run_with_help():
    cmds = commands(README)
    assert cmds, "no `python ...` command found in README.md's code blocks"
    missing = [" ".join(c) for c in cmds if not exists(c)]
    assert not missing, f"README.md names commands that do not exist: {missing}"
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(_help, cmds))
    failed = [f"python {' '.join(c)} --help exited {rc}:\n{out[-2000:]}" for c, rc, out in results
              if rc != 0 or "usage" not in out.lower()]
    assert not failed, "\n\n".join(failed)
