#!/usr/bin/env python3
"""Checks that the documentation names only things that exist (python3, standard library only).

    python3 scripts/check_docs.py [--root DIR]

Reads README.md and docs/*.md and fails, listing every miss with its file and line, when
  - a relative link or image ([text](path), [text](path#anchor)) points at no file, or at no
    heading of the linked Markdown file;
  - a repository path written in code (`scripts/test.sh`, `tests/python/package/`,
    `scripts/sanitizers/*.supp`, `examples/python/quickstart.py`, ...: anything under one of the
    repository's top-level folders, or a top-level file such as CMakeLists.txt) does not exist
    (a glob must match at least one file);
  - a public header written as an include path (`graddrop/layer.h`) is not under include/;
  - a build output (`build/examples/quickstart`, `./build/bench/bench_cpu_combine_bench`,
    `build/src/libgraddrop.so`), a `--target NAME`, or a test or program name in code
    (`cpu_tests`, `graddrop_fuzz_tests`, `demo_multitask_fashion`, `bench_...`) is not a target
    or a CTest test that the project's CMake files define;
  - a `ctest ... -R REGEX` matches no CTest test;
  - a code block marked `<!-- excerpt: PATH -->` has a line that is not in PATH, in order
    (lines that are only "..." or a comment "// ..." / "# ..." stand for omitted code);
  - README.md is longer than 250 lines.

PENDING below names paths that other work is adding; they are reported, not failed, while
missing.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import sys
from typing import Iterable, List, Set, Tuple

README_MAX_LINES = 250

# Paths the documentation links to that land with work merged separately: reported while
# missing, never failed. Remove an entry once its file is in the repository.
PENDING: dict = {}

TOP_LEVEL_FILES = ("README.md", "LICENSE", "CMakeLists.txt", "pyproject.toml", "CITATION.cff")
# A code token that starts with one of these is a repository path.
TOP_LEVEL_DIRS = ("bench", "cmake", "cuda", "docs", "examples", "include", "python", "scripts",
                  "src", "tests", "tools", ".ci")
# Build folders whose files are CMake targets (executables, or lib<target>.so).
TARGET_DIRS = ("bench", "examples", "src", "tests")
# Code tokens that name a test or a program: checked against the CMake targets and tests.
NAME_PATTERN = re.compile(r"^(?:[a-z][a-z0-9_]*_tests|bench_[a-z0-9_]+|demo_[a-z0-9_]+)$")

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
FENCE = re.compile(r"^\s*(```|~~~)")
EXCERPT = re.compile(r"<!--\s*excerpt:\s*(\S+)\s*-->")
TOKEN_SPLIT = re.compile(r"[\s\"'`=,;()\[\]{}<>|]+")


class Report:
    def __init__(self) -> None:
        self.missing: List[str] = []
        self.checked = 0
        self.verbose = False

    def check(self, ok: bool, where: str, what: str) -> None:
        self.checked += 1
        if self.verbose:
            subject = re.search(r"`[^`]*`", what)
            print(f"  {'ok  ' if ok else 'MISS'} {where}: "
                  f"{subject.group(0) if ok and subject else what}")
        if not ok:
            self.missing.append(f"{where}: {what}")


# ---- What the CMake files define ------------------------------------------------------------

def cmake_files(root: str) -> Iterable[str]:
    for directory, folders, files in os.walk(root):
        folders[:] = [f for f in folders
                      if not (f.startswith("build") or f.startswith(".") or f == "out")]
        for name in files:
            if name == "CMakeLists.txt" or name.endswith(".cmake"):
                yield os.path.join(directory, name)


def cmake_names(root: str) -> Tuple[Set[str], Set[str]]:
    """(targets, tests) defined by the project's CMake files. A name built from a variable
    (bench_${name}) is expanded with the stems of the files the same CMake file globs."""
    targets: Set[str] = set()
    tests: Set[str] = set()
    for path in cmake_files(root):
        with open(path, encoding="utf-8") as file:
            text = re.sub(r"#[^\n]*", "", file.read())
        stems = set()
        for pattern in re.findall(r"\$\{CMAKE_CURRENT_SOURCE_DIR\}/([^\s)]+)", text):
            for match in glob.glob(os.path.join(os.path.dirname(path), pattern)):
                stems.add(os.path.basename(match).split(".")[0])
        found = [(targets, n) for n in re.findall(
            r"add_(?:executable|library|custom_target)\(\s*([A-Za-z0-9_${}-]+)", text)]
        found += [(tests, n) for n in re.findall(r"add_test\(\s*NAME\s+([A-Za-z0-9_${}-]+)", text)]
        for kind, name in found:
            if "${" in name:
                kind.update(re.sub(r"\$\{[^}]*\}", stem, name) for stem in stems)
            else:
                kind.add(name)
    return targets, tests


# ---- The Markdown ---------------------------------------------------------------------------

def heading_anchors(path: str) -> Set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    anchors: Set[str] = set()
    in_code = False
    with open(path, encoding="utf-8") as file:
        for line in file:
            if FENCE.match(line):
                in_code = not in_code
            elif not in_code and line.startswith("#"):
                title = line.lstrip("#").strip().lower()
                title = re.sub(r"[^\w\- ]", "", title)
                anchors.add(title.replace(" ", "-"))
    return anchors


def code_spans(lines: List[str]) -> Iterable[Tuple[int, str, bool]]:
    """(line number, code text, in a fenced block) for inline code and fenced code lines."""
    in_code = False
    for number, line in enumerate(lines, 1):
        if FENCE.match(line):
            in_code = not in_code
            continue
        if in_code:
            yield number, line, True
        else:
            for match in INLINE_CODE.finditer(line):
                yield number, match.group(2), False


def clean(token: str) -> str:
    token = token.strip().rstrip(".:;,")
    if token.startswith("./"):
        token = token[2:]
    return token


def check_repository_path(root: str, token: str, where: str, report: Report) -> None:
    if any(c in token for c in "<>$"):
        return  # a placeholder (<dir>, $OUT)
    path = token.rstrip("/")
    if any(c in path for c in "*?["):
        report.check(bool(glob.glob(os.path.join(root, path))), where,
                     f"no file matches `{token}`")
        return
    if path in PENDING and not os.path.exists(os.path.join(root, path)):
        return
    report.check(os.path.exists(os.path.join(root, path)), where, f"`{token}` does not exist")


def check_build_output(token: str, where: str, targets: Set[str], report: Report) -> None:
    parts = token.split("/")
    if len(parts) < 3 or parts[1] not in TARGET_DIRS or any(c in token for c in "<>$*"):
        return
    name = parts[-1]
    if name.startswith("lib") and name.endswith(".so"):
        name = name[3:-3]
    if "." in name:
        return  # a generated file, not a program
    report.check(name in targets, where, f"`{token}`: no CMake target `{name}`")


def check_code(root: str, where: str, code: str, targets: Set[str], tests: Set[str],
               report: Report) -> None:
    tokens = [clean(t) for t in TOKEN_SPLIT.split(code)]
    tokens = [t for t in tokens if t]
    for index, token in enumerate(tokens):
        head = token.split("/")[0]
        if "/" in token and head in TOP_LEVEL_DIRS:
            check_repository_path(root, token, where, report)
        elif token in TOP_LEVEL_FILES:
            check_repository_path(root, token, where, report)
        elif re.match(r"^graddrop/[A-Za-z0-9_/]+\.h$", token):
            report.check(os.path.exists(os.path.join(root, "include", token)), where,
                         f"`{token}` is not a public header (include/{token})")
        elif re.match(r"^build[A-Za-z0-9_-]*/", token):
            check_build_output(token, where, targets, report)
        elif NAME_PATTERN.match(token):
            report.check(token in targets or token in tests, where,
                         f"`{token}` is neither a CMake target nor a CTest test")
        if index > 0 and tokens[index - 1] == "--target" and re.match(r"^[A-Za-z0-9_]+$", token):
            report.check(token in targets, where, f"`--target {token}`: no such CMake target")
        if index > 0 and tokens[index - 1] == "-R" and "ctest" in tokens[:index]:
            regex = token
            report.check(any(re.search(regex, test) for test in tests), where,
                         f"`ctest -R {regex}` matches no CTest test")


def check_excerpt(root: str, path: str, lines: List[str], start: int, where: str,
                  report: Report) -> None:
    """The fenced block after line `start` must be lines of `path`, in order."""
    source_path = os.path.join(root, path)
    if not os.path.exists(source_path):
        report.check(False, where, f"excerpt source `{path}` does not exist")
        return
    with open(source_path, encoding="utf-8") as file:
        source = [line.rstrip() for line in file]
    number = start
    while number < len(lines) and not FENCE.match(lines[number]):
        number += 1
    position = 0
    for block_line in lines[number + 1:]:
        if FENCE.match(block_line):
            return
        number += 1
        text = block_line.rstrip()
        if not text.strip() or re.match(r"^\s*(\.\.\.|//\s*\.\.\.|#\s*\.\.\.)", text):
            continue
        while position < len(source) and source[position] != text:
            position += 1
        report.check(position < len(source), where,
                     f"excerpt line {number + 1} is not in `{path}` (in order): {text.strip()}")
        if position >= len(source):
            return
        position += 1


def check_markdown(root: str, relative: str, targets: Set[str], tests: Set[str],
                   report: Report) -> None:
    path = os.path.join(root, relative)
    with open(path, encoding="utf-8") as file:
        lines = file.read().split("\n")
    in_code = False
    for number, line in enumerate(lines, 1):
        where = f"{relative}:{number}"
        if FENCE.match(line):
            in_code = not in_code
        excerpt = EXCERPT.fullmatch(line.strip())
        if excerpt:
            check_excerpt(root, excerpt.group(1), lines, number, where, report)
        if in_code:
            continue
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            target = match.group(1)
            if re.match(r"^[a-z]+:", target):
                continue  # https:, mailto:
            file_part, _, anchor = target.partition("#")
            linked = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) \
                if file_part else path
            linked_relative = os.path.relpath(linked, root)
            if linked_relative in PENDING and not os.path.exists(linked):
                continue
            report.check(os.path.exists(linked), where, f"link target `{target}` does not exist")
            if anchor and os.path.isfile(linked) and linked.endswith(".md"):
                report.check(anchor in heading_anchors(linked), where,
                             f"link `{target}`: no heading with anchor #{anchor}")
    for number, code, _ in code_spans(lines):
        check_code(root, f"{relative}:{number}", code, targets, tests, report)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=os.path.join(os.path.dirname(__file__), ".."))
    parser.add_argument("--verbose", action="store_true", help="list every reference checked")
    arguments = parser.parse_args()
    root = os.path.abspath(arguments.root)
    targets, tests = cmake_names(root)
    documents = ["README.md"] + sorted(
        os.path.relpath(p, root) for p in glob.glob(os.path.join(root, "docs", "*.md")))
    report = Report()
    report.verbose = arguments.verbose
    for document in documents:
        check_markdown(root, document, targets, tests, report)
    with open(os.path.join(root, "README.md"), encoding="utf-8") as file:
        readme_lines = len(file.read().splitlines())
    report.check(readme_lines <= README_MAX_LINES, "README.md",
                 f"{readme_lines} lines, more than {README_MAX_LINES}")
    for path, reason in PENDING.items():
        if not os.path.exists(os.path.join(root, path)):
            print(f"check_docs: note: {path} is not here yet ({reason}); links to it not checked")
    if report.missing:
        print(f"check_docs: {len(report.missing)} of {report.checked} references name nothing "
              "in the repository:", file=sys.stderr)
        for line in report.missing:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"check_docs: {len(documents)} documents, {report.checked} references, all present "
          f"({len(targets)} CMake targets, {len(tests)} CTest tests known); README.md "
          f"{readme_lines} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
