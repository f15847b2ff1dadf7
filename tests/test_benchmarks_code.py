"""benchmarks/run.py: a results file names the code it measured."""

from __future__ import annotations

import subprocess
from pathlib import Path

from benchmarks.run import describe_code


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


def test_results_name_the_commit_and_the_modified_files(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.py").write_text("a = 1\n")
    (repo / "b.py").write_text("b = 1\n")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "one")
    head = _git(repo, "rev-parse", "HEAD").strip()
    assert describe_code(repo) == {"commit": head, "modified": []}
    (repo / "b.py").write_text("b = 2\n")
    (repo / "new.py").write_text("untracked: not measured code of the checkout\n")
    assert describe_code(repo) == {"commit": head, "modified": ["b.py"]}


def test_no_checkout_no_claim(tmp_path: Path) -> None:
    assert describe_code(tmp_path) is None
