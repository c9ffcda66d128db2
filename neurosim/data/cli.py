"""Text for `neurosim data list` and `neurosim data fetch NAME [--from PATH]`."""
from __future__ import annotations

import os

from .fetch import fetch_dataset
from .loading import available_datasets
from .registry import get_info


def cli_list(root: str | os.PathLike | None = None) -> str:
    """A table of the known datasets: whether each is present (and verified), where, details."""
    rows = available_datasets(root)
    header = {"name": "dataset", "present": "present", "location": "location",
              "detail": "detail"}
    cells = [header] + [dict(r, present="yes" if r["present"] else "no") for r in rows]
    widths = {k: max(len(str(c[k])) for c in cells) for k in ("name", "present", "location")}
    return "\n".join(f"{c['name']:<{widths['name']}}  {c['present']:<{widths['present']}}  "
                     f"{c['location']:<{widths['location']}}  {c['detail']}" for c in cells)


def cli_fetch(name: str, source: str | os.PathLike | None = None,
              root: str | os.PathLike | None = None) -> str:
    """Fetch ``name`` (from ``source`` if given) with progress on stderr; return a summary."""
    info = get_info(name)
    path = fetch_dataset(info.name, source_path=source, root=root, progress=True)
    if info.kind == "embedded":
        return f"{info.title} ships with scikit-learn ({path}); nothing to fetch."
    return f"{info.title}: {len(info.files)} verified files in {path}"
