"""The default local corpus: the Python documentation sources from Debian's
python3.11-doc.

Split by file (a hash of the path, so the split never depends on listing order) into
calibration, train and held-out parts; each part is a JSON-lines file of documents.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
from pathlib import Path

from loguru import logger

from darwin_modifier.data.cache import cache_dir

SPLITS = ("calibration", "train", "heldout")
_PACKAGE = "python3.11-doc"
_SOURCES = "usr/share/doc/python3.11/html/_sources"


def split_of(relative_path: str) -> str:
    """Split of a document by a hash of its name: 20% calibration, 70% train, 10%
    held out; stable across machines and file orders."""
    bucket = int(hashlib.sha1(relative_path.encode()).hexdigest(), 16) % 10
    return "heldout" if bucket == 0 else "calibration" if bucket < 3 else "train"


def _download_deb(workdir: Path) -> Path:
    cmd = ["apt-get", "download", _PACKAGE]
    if subprocess.run(cmd, cwd=workdir, capture_output=True).returncode != 0:
        logger.info("apt-get download failed; running apt-get update once")
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True)
        subprocess.run(cmd, cwd=workdir, check=True, capture_output=True)
    return next(workdir.glob(f"{_PACKAGE}_*.deb"))


def fetch_corpus(target: str | Path | None = None) -> Path:
    """Directory holding ``{calibration,train,heldout}.jsonl``; built once."""
    target = Path(target) if target else cache_dir("corpus", "python-docs")
    if all((target / f"{s}.jsonl").exists() for s in SPLITS):
        return target
    with tempfile.TemporaryDirectory() as tmp:
        deb = _download_deb(Path(tmp))
        subprocess.run(["dpkg", "-x", str(deb), str(Path(tmp) / "x")], check=True)
        root = Path(tmp) / "x" / _SOURCES
        parts: dict[str, list[dict]] = {s: [] for s in SPLITS}
        for path in sorted(root.rglob("*.txt")):
            rel = str(path.relative_to(root))
            text = path.read_text(encoding="utf-8", errors="replace").strip()
            if text:
                parts[split_of(rel)].append({"path": rel, "text": text})
    target.mkdir(parents=True, exist_ok=True)
    for split, docs in parts.items():
        with open(target / f"{split}.jsonl", "w") as f:
            for doc in docs:
                f.write(json.dumps(doc) + "\n")
        logger.info(f"python-docs {split}: {len(docs)} files")
    return target


def corpus_split(split: str) -> list[str]:
    """Documents of one split of the default corpus."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    path = fetch_corpus() / f"{split}.jsonl"
    return [json.loads(line)["text"] for line in path.read_text().splitlines()]


if __name__ == "__main__":
    print(fetch_corpus())
