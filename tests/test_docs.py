"""The documentation's Python examples run as written, so that a doc that drifts from the code fails.

Every ```python block of README.md and of docs/*.md is one test.  The rule: **each block is a complete
program**.  It runs on its own, in a fresh interpreter, with no state from the blocks before it, the
way a reader pastes it.  A block passes when it exits with status 0; an `assert` inside a block is
therefore checked too.

Each block runs with the repository as its working directory (so a relative path such as
`weights/...` means what it means in a fresh clone), but in a temporary copy of the repository:
a block that writes files leaves the checkout untouched.  The script itself lies outside that copy
and PYTHONPATH names the package under test, so the blocks import the same tinyalbert as this test
(and reuse its compiled Numba kernels), not the copy's.

Sketches that are not meant to run go in a plain ``` fence.  The relative links of these pages
(and of weights/README.md) must name files that exist.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tinyalbert

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")))
LINKED_PAGES = (*DOCUMENTS, "weights/README.md")
PACKAGE_ROOT = str(Path(tinyalbert.__file__).resolve().parent.parent)
MARKDOWN_LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")
# A fence may be indented (inside a list item); the closing fence has the same indentation.
PYTHON_BLOCK = re.compile(r"^(?P<indent>[ \t]*)```(?:python|py)[ \t]*\n(?P<code>.*?)^(?P=indent)```[ \t]*$",
                          re.MULTILINE | re.DOTALL)
BLOCK_TIMEOUT_S = 600        # a cold Numba cache compiles the kernels first (about a minute, more on a busy machine)
COPY_IGNORE = shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache", "*.nbi", "*.nbc", "runs")


def python_blocks(document: str) -> list[tuple[int, str]]:
    """(line number of the opening fence, code with the fence's indentation removed) for each block."""
    text = (ROOT / document).read_text(encoding="utf-8")
    blocks = []
    for match in PYTHON_BLOCK.finditer(text):
        indent = match.group("indent")
        lines = match.group("code").splitlines(keepends=True)
        code = "".join(line[len(indent):] if line.startswith(indent) else line for line in lines)
        blocks.append((text.count("\n", 0, match.start()) + 1, code))
    return blocks


ALL_BLOCKS = [pytest.param(document, code, id=f"{document}:{line}")
              for document in DOCUMENTS for line, code in python_blocks(document)]


def test_documents_have_python_blocks():
    """The extraction finds the README's examples (a broken pattern would otherwise pass vacuously)."""
    assert len(python_blocks("README.md")) >= 3
    assert all(code.strip() for _, code in python_blocks("README.md"))


@pytest.mark.parametrize("page", LINKED_PAGES)
def test_relative_links_name_existing_files(page):
    text = (ROOT / page).read_text(encoding="utf-8")
    targets = [m.group("target").split("#")[0] for m in MARKDOWN_LINK.finditer(text)]
    local = [t for t in targets if t and not re.match(r"[a-z][a-z0-9+.-]*:", t)]    # not http:, mailto:, ...
    missing = [t for t in local if not ((ROOT / page).parent / t).exists()]
    assert not missing, f"{page} links to files that are not in the repository: {missing}"


@pytest.fixture(scope="module")
def repository_copy(tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("docs") / "repository"
    shutil.copytree(ROOT, copy, symlinks=True, ignore=COPY_IGNORE)
    return copy


@pytest.mark.parametrize("document, code", ALL_BLOCKS)
def test_python_block_runs(document, code, repository_copy, tmp_path):
    script = tmp_path / "block.py"
    script.write_text(code, encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = PACKAGE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("TINYALBERT_WEIGHTS", None)       # the blocks must not depend on the reader's environment
    result = subprocess.run([sys.executable, str(script)], cwd=repository_copy, env=env, capture_output=True,
                            text=True, timeout=BLOCK_TIMEOUT_S)
    assert result.returncode == 0, (f"this block of {document} fails:\n{code}\n--- stderr ---\n"
                                    f"{result.stderr[-3000:]}")
