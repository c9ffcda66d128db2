"""docs/tutorial.md runs (its Python blocks, in order, in one namespace), and so does the
README's tour."""
from __future__ import annotations

import re
from pathlib import Path

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"


def test_tutorial_runs_from_scratch(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", TUTORIAL.read_text(), flags=re.S)
    assert len(blocks) >= 6
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "tutorial"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{TUTORIAL.name} block {i + 1}", "exec"), namespace)
    assert (tmp_path / "tutorial.h5").stat().st_size > 0
    assert (tmp_path / "tutorial.png").stat().st_size > 10_000


def test_readme_tour_runs(monkeypatch, tmp_path):
    readme = TUTORIAL.parents[1] / "README.md"
    block = re.findall(r"```python\n(.*?)```", readme.read_text(), flags=re.S)[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "README.md tour", "exec"), namespace)
    assert namespace["sim"].state["h"].u.shape == (4, 32)
