"""Load dataset rows (the d1/BGPO row layout) from parquet or JSON-lines files, or the HF hub.

`load_rows(path_or_name, split=None, limit=None)`:
- a `.parquet` / `.jsonl` / `.json` file: its rows;
- a directory: the files inside `<dir>/<split>/` when `split` is given, else inside `<dir>`,
  in name order, concatenated;
- anything else is taken as a Hugging Face hub dataset name and loaded with `datasets`
  (imported lazily, and only here; this path needs the network and is not exercised by the tests).

Rows are plain dicts, so nested fields (`prompt` messages, `reward_model`) come back as lists and
dicts. Nothing here validates a row's task fields: scoring reports a malformed row as `error`.
"""

from __future__ import annotations

import json
from pathlib import Path

_SUFFIXES = (".parquet", ".jsonl", ".json")


def load_rows(path_or_name: str | Path, split: str | None = None,
              limit: int | None = None) -> list[dict]:
    """Rows of a file, a directory of files, or a hub dataset; at most `limit` of them."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    path = Path(path_or_name)
    if path.is_file():
        return _read_file(path, limit)
    if path.is_dir():
        folder = path / split if split else path
        files = sorted(p for p in folder.iterdir() if p.suffix in _SUFFIXES) if folder.is_dir() else []
        if not files:
            raise FileNotFoundError(f"no {'/'.join(_SUFFIXES)} files in {folder}")
        rows: list[dict] = []
        for file in files:
            rows.extend(_read_file(file, None if limit is None else limit - len(rows)))
            if limit is not None and len(rows) >= limit:
                break
        return rows
    if path.suffix in _SUFFIXES or str(path_or_name).startswith((".", "/")):
        raise FileNotFoundError(f"dataset file {path} does not exist")
    return _load_hub(str(path_or_name), split, limit)


def _read_file(path: Path, limit: int | None) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # noqa: PLC0415 - only parquet users need it

        table = pq.read_table(path)
        if limit is not None:
            table = table.slice(0, limit)
        return table.to_pylist()
    if path.suffix == ".json":
        with path.open(encoding="utf-8") as fh:
            data = json.load(fh)
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
        return data[:limit] if limit is not None else data
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if limit is not None and len(rows) >= limit:
                break
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{lineno}: not JSON: {exc}") from exc
    return rows


def _load_hub(name: str, split: str | None, limit: int | None) -> list[dict]:
    """Load from the Hugging Face hub (untested here: the test machines have no network)."""
    try:
        import datasets  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        raise ValueError(f"{name!r} is not a file or directory, and loading it from the Hugging "
                         "Face hub needs the `datasets` package (pip install datasets)") from exc
    split_spec = split or "train"
    if limit is not None:
        split_spec = f"{split_spec}[:{limit}]"
    return [dict(row) for row in datasets.load_dataset(name, split=split_spec)]
