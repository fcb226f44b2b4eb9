"""The pieces of fast weight sync that need no second host: message cutting, packing from a
state dict, FlatWeights (receive into parameter storage, all-or-nothing swap), and the whole
send/receive pipeline over loopback between processes. Not marked multinode: no namespaces."""

from __future__ import annotations

import pytest
import torch
from sync_member import member_command, run_members
from torch import nn

from cluster.network import free_port, interface_for, resolve
from dllm.weights import (
    FlatWeights,
    message_ranges,
    pack_bucket,
    pack_range,
    plan_buckets,
    source_view,
)


def _state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {"a": torch.randn(300, 1000, generator=gen), "b": torch.randn(10, generator=gen),
            "c": torch.randn(7, 3, generator=gen), "d": torch.randn(2000, 600, generator=gen),
            "e": torch.randn(5, generator=gen)}


def test_messages_cover_the_bucket_and_big_tensors_travel_alone():
    state = _state()
    (bucket,) = plan_buckets(state.items(), bucket_bytes=2**30)
    ranges = message_ranges(bucket, chunk_bytes=2**20, solo_bytes=2**18)
    flat = [i for a, b in ranges for i in (a, b)]
    assert flat[0] == 0 and flat[-1] == bucket.numel and flat == sorted(flat)
    assert all(b - a <= 2**20 // 4 for a, b in ranges)
    assert all(a == b for a, b in zip(flat[1:-1:2], flat[2::2], strict=True))  # contiguous, no gaps
    offsets = {s.name: s for s in bucket.specs}
    big = [(s.offset, s.offset + s.numel) for s in (offsets["a"], offsets["d"])]
    for a, b in ranges:  # a message lies inside one big tensor or touches none
        inside = [lo <= a and b <= hi for lo, hi in big]
        overlaps = [a < hi and lo < b for lo, hi in big]
        assert any(inside) or not any(overlaps)
        view = source_view(bucket, state, a, b, torch.device("cpu"))
        packed = pack_range(bucket, state, a, b, torch.empty(b - a))
        expected = pack_bucket(bucket, state)[a:b]
        assert torch.equal(packed, expected)
        if any(inside):
            assert view is not None and torch.equal(view, expected)  # straight from the tensor
            assert view.untyped_storage().data_ptr() in {state[n].untyped_storage().data_ptr() for n in "ad"}


def test_source_view_refuses_a_cast():
    state = {"w": torch.randn(1000, 1000)}
    (bucket,) = plan_buckets({k: v.to(torch.bfloat16) for k, v in state.items()}.items())
    assert source_view(bucket, state, 0, 1000, torch.device("cpu")) is None
    out = pack_range(bucket, state, 0, 1000, torch.empty(1000, dtype=torch.bfloat16))
    assert torch.equal(out, state["w"].reshape(-1)[:1000].to(torch.bfloat16))


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.head = nn.Linear(8, 50, bias=False)
        self.head.weight = self.embed.weight
        self.norm = nn.LayerNorm(8)


def test_flat_weights_swap_in_whole_updates_only():
    model = _Tied()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    buckets = plan_buckets(model.state_dict().items(), bucket_bytes=1000)  # several buckets
    assert len(buckets) > 1
    flat = FlatWeights(model, buckets)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model.head.weight is model.embed.weight  # the tie survives
    source = {k: torch.randn_like(v) for k, v in before.items()}
    source["head.weight"] = source["embed.weight"]
    for bucket, target in zip(buckets, flat.targets(), strict=True):
        target.copy_(pack_bucket(bucket, source))
        # Until commit the model is untouched, whatever happened to the targets.
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    flat.commit()
    assert all(torch.equal(v, source[k]) for k, v in model.state_dict().items())
    x = torch.tensor([[1, 2, 3]])
    assert torch.equal(model.head(model.embed(x)), nn.functional.linear(source["embed.weight"][x], source["embed.weight"]))
    flat.stage([pack_bucket(b, before) for b in buckets])
    flat.commit()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_flat_weights_without_spare_receives_into_the_live_weights():
    model = nn.Linear(4, 3)
    buckets = plan_buckets(model.state_dict().items())
    flat = FlatWeights(model, buckets, spare=False)
    flat.targets()[0].fill_(2.0)
    assert torch.all(model.weight == 2.0) and torch.all(model.bias == 2.0)


def test_endpoint_resolution_by_address_and_override():
    assert interface_for("127.0.0.1") == "lo"
    assert resolve("127.0.0.1").interface == "lo"
    assert resolve(interface="lo").address == "127.0.0.1"
    with pytest.raises(LookupError, match="no interface holds"):
        interface_for("198.51.100.77")
    assert free_port("127.0.0.1") > 0


@pytest.mark.slow
def test_loopback_pipeline_delivers_bit_identical_weights_to_three_receivers():
    port = free_port("127.0.0.1")
    cmds = [member_command("root" if r == 0 else "recv", r, 4, f"127.0.0.1:{port}", "127.0.0.1",
                           "--variants=new:chain,new:broadcast", "--sizes=small", "--chunk-mb=1", "--seed=3")
            for r in range(4)]
    root, *receivers = run_members(cmds, timeout=150)
    for shape in ("chain", "broadcast"):
        sent = root[f"new:{shape}"]["small"]["digest"]
        assert {r[f"new:{shape}"]["small"]["digest"] for r in receivers} == {sent}
