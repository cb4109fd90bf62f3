"""Where fetched models and corpora live: ``$DARWIN_CACHE`` or
``~/.cache/darwin_modifier``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    root = Path(
        os.environ.get("DARWIN_CACHE", Path.home() / ".cache" / "darwin_modifier")
    )
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
