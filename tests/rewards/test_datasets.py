"""load_rows from jsonl, json, parquet files and directories (the hub path is not tested here)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rewards import score
from rewards.datasets import load_rows

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rewards"


def test_jsonl_and_limit():
    rows = load_rows(FIXTURES / "gsm8k.jsonl")
    assert len(rows) == 6 and rows[0]["prompt"][0]["role"] == "user"
    assert len(load_rows(str(FIXTURES / "gsm8k.jsonl"), limit=2)) == 2


def test_parquet_round_trip_keeps_nested_fields(tmp_path):
    rows = load_rows(FIXTURES / "sudoku.jsonl")
    path = tmp_path / "sudoku.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    back = load_rows(path, limit=3)
    assert back == rows[:3]
    gold = back[0]["reward_model"]["ground_truth"]
    assert score("sudoku", f"<answer>{gold}</answer>", back[0]).score == 1.0


def test_directory_with_split(tmp_path):
    (tmp_path / "test").mkdir()
    shutil.copy(FIXTURES / "countdown.jsonl", tmp_path / "test" / "a.jsonl")
    (tmp_path / "test" / "b.json").write_text(json.dumps(load_rows(FIXTURES / "math.jsonl")))
    rows = load_rows(tmp_path, split="test")
    assert len(rows) == 6 + 12
    assert len(load_rows(tmp_path, split="test", limit=8)) == 8
    with pytest.raises(FileNotFoundError):
        load_rows(tmp_path, split="train")


def test_missing_paths_and_bad_lines(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_rows(tmp_path / "nope.parquet")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        load_rows(bad)
