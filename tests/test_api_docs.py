"""The public Python API is documented: every public module, object, method and property has a
docstring, and docs/api.md (generated from them by docs/gen_api.py) is current."""
from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
sys.path.insert(0, str(DOCS))

import gen_api  # noqa: E402


def test_every_public_name_has_a_docstring():
    missing = gen_api.undocumented()
    assert not missing, "public names without a docstring:\n  " + "\n  ".join(missing)


def test_api_reference_is_current():
    assert (DOCS / "api.md").read_text() == gen_api.render(), \
        "docs/api.md is out of date: run python docs/gen_api.py"
