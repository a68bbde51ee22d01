"""Per-participant adapter shapes (``AdapterSpec``): slicing and zero-padding, the
coordinator decoding each update against its own spec and combining ranks 4 and 8 by
zero-padding, and the refusals."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch

from zenfed.config import parse_config
from zenfed.coordinator import Coordinator, UpdateRejected
from zenfed.errors import ZenfedError
from zenfed.protocol import Update
from zenfed.protocol.adapter import AdapterSpec
from zenfed.protocol.messages import Task

A0 = "m.layers.0.q.lora_A.weight"
B0 = "m.layers.0.q.lora_B.weight"
A1 = "m.layers.1.q.lora_A.weight"
B1 = "m.layers.1.q.lora_B.weight"
SHAPES = {A0: (8, 6), B0: (5, 8), A1: (8, 6), B1: (5, 8)}
INITIAL = {k: torch.zeros(s) for k, s in SHAPES.items()}


def test_a_spec_slices_the_global_adapter_and_pads_its_update_back() -> None:
    g = {
        k: torch.arange(torch.Size(s).numel(), dtype=torch.float32).reshape(s)
        for k, s in SHAPES.items()
    }
    spec = AdapterSpec(rank=4, layers=(1,))
    local = spec.slice(g)
    assert set(local) == {A1, B1}
    torch.testing.assert_close(local[A1], g[A1][:4])  # A's first 4 rows
    torch.testing.assert_close(local[B1], g[B1][:, :4])  # B's first 4 columns
    assert spec.shapes(SHAPES) == {A1: (4, 6), B1: (5, 4)}
    back = spec.embed(local, SHAPES)
    assert back[A1].shape == (8, 6) and (back[A1][4:] == 0).all()
    torch.testing.assert_close(back[A1][:4], g[A1][:4])
    personal = AdapterSpec(personal=("layers.0.",))
    assert set(personal.shapes(SHAPES)) == {A1, B1}  # layer 0 stays with its holder
    assert AdapterSpec().id == "" and spec.id == "r4,l1" and personal.id == "p:layers.0."
    assert AdapterSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (AdapterSpec(rank=0), r"rank 0 is outside \[1, 8\]"),
        (AdapterSpec(rank=9), r"rank 9 is outside \[1, 8\]"),
        (AdapterSpec(layers=(7,)), "layer 7 has no adapter"),
        (AdapterSpec(personal=("lm_head",)), "personal 'lm_head' names no adapter parameter"),
        (AdapterSpec(personal=("lora",)), "leaves nothing to send"),
    ],
)
def test_a_spec_the_adapter_cannot_give_is_refused_naming_why(
    spec: AdapterSpec, message: str
) -> None:
    with pytest.raises(ZenfedError, match=message):
        spec.check(SHAPES, 8)


def _coord(**adapters: Any) -> Coordinator:
    cfg = parse_config(
        {
            "data": {"categories": ["ai"]},
            "lora": {"r": 8},
            "run": {"rounds": 2},
            "adapters": adapters,
            "service": {"max_weight_share": 1.0},
        }
    )
    return Coordinator(cfg, INITIAL, {"p4a": 10, "p4b": 30, "p8a": 20, "p8b": 40})


def _update(c: Coordinator, task: Task, value: float, n: int, spec: AdapterSpec) -> Update:
    codec = c.codec_for(spec)
    tensors = {k: torch.full(s, value) for k, s in spec.shapes(SHAPES).items()}
    payload = codec.to_bytes(codec.encode(tensors, shared_seed=task.codec_seed))
    return Update(
        task.round, task.participant, task.version, payload, n, 8, 100, 1.0, 2.0, 1, adapter=spec.id
    )


def test_ranks_4_and_8_are_decoded_each_by_its_spec_and_combined_by_zero_padding() -> None:
    c = _coord(assign={"p4a": {"r": 4}, "p4b": {"r": 4}})
    tasks = {t.participant: t for t in c.open_round()}
    r4 = AdapterSpec(rank=4)
    assert tasks["p4a"].adapter == r4 and tasks["p8a"].adapter is None
    values = {"p4a": (1.0, 10), "p4b": (2.0, 30), "p8a": (4.0, 20), "p8b": (8.0, 40)}
    for p, (v, n) in values.items():
        c.submit(_update(c, tasks[p], v, n, r4 if p.startswith("p4") else AdapterSpec()))
    v = c.close_round()
    # Worked: rank 4 mean (10 x 1 + 30 x 2) / 40 = 1.75, rank 8 mean (20 x 4 + 40 x 8) / 60
    # = 6.667; the first 4 ranks (40 x 1.75 + 60 x 6.667) / 100 = 4.7, the others held by
    # the rank-4 updates as zeros: 60 x 6.667 / 100 = 4.0
    a = c.state.params[A0]
    torch.testing.assert_close(a[:4], torch.full((4, 6), 4.7))
    torch.testing.assert_close(a[4:], torch.full((4, 6), 4.0))
    torch.testing.assert_close(c.state.params[B1][:, :4], torch.full((5, 4), 4.7))
    assert dict(zip(v.participants, v.weights, strict=True)) == {
        "p4a": 10.0,
        "p4b": 30.0,
        "p8a": 20.0,
        "p8b": 40.0,
    }


def test_one_spec_for_everybody_changes_nothing() -> None:
    plain, shaped = _coord(), _coord(assign={})
    for c in (plain, shaped):
        tasks = c.open_round()
        for t, v in zip(tasks, (1.0, 2.0, 3.0, 4.0), strict=True):
            c.submit(_update(c, t, v, 10, AdapterSpec()))
        c.close_round()
    assert plain.version.id == shaped.version.id


def test_an_update_of_another_spec_than_its_tasks_is_refused_and_changes_nothing() -> None:
    c = _coord(assign={"p4a": {"r": 4}})
    tasks = {t.participant: t for t in c.open_round()}
    u = _update(c, tasks["p4a"], 1.0, 10, AdapterSpec())  # trained the whole adapter
    with pytest.raises(UpdateRejected, match="adapter spec '', its task's is 'r4'"):
        c.submit(u)
    forged = replace(_update(c, tasks["p4a"], 1.0, 10, AdapterSpec()), adapter="r4")
    with pytest.raises(UpdateRejected, match="payload"):  # rank-8 tensors named rank 4
        c.submit(forged)
    assert c.open_round_info is not None and not c.open_round_info[2]


def test_assignments_the_model_cannot_give_are_refused_before_round_one() -> None:
    with pytest.raises(ZenfedError, match="layer 5 has no adapter"):
        _coord(assign={"p4a": {"layers": [5]}})
    with pytest.raises(ZenfedError, match="rank above lora.r = 8"):
        _coord(assign={"p4a": {"r": 16}})
    with pytest.raises(ZenfedError, match="secagg.enabled is not built"):
        parse_config(
            {
                "adapters": {"assign": {"a": {"r": 4}}},
                "secagg": {"enabled": True, "clip_norm": 1.0},
            }
        )
