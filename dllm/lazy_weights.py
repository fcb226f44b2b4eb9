"""A saved model's weights as a read-only mapping that reads each tensor from disk when asked.

`save_pretrained` writes one or several `*.safetensors` files; `LazyWeights(folder)` indexes their
keys and returns `weights[name]` straight from the (memory-mapped) file. A sharded learner loading
a checkpoint takes one tensor at a time and keeps only its shard, so no rank ever holds the whole
model in host memory (LLaDA-8B in fp32 is 32 GB).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open


class LazyWeights(Mapping[str, torch.Tensor]):
    def __init__(self, folder: str | Path) -> None:
        files = sorted(Path(folder).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors weights in {folder}")
        self._handles = [safe_open(str(f), framework="pt", device="cpu") for f in files]
        self._where: dict[str, int] = {}
        for i, handle in enumerate(self._handles):
            for key in handle.keys():
                if key in self._where:
                    raise ValueError(f"weight {key!r} appears in two files of {folder}")
                self._where[key] = i

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._handles[self._where[name]].get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)
