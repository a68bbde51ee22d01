"""Contract tests every codec passes, plus each codec's own error bound (hypothesis)."""

import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zenfed.compress import CodecError, LowRank, Pipeline, Quantize, RandK, Sign, Sketch, TopK
from zenfed.compress.base import Codec, blocks, pack_bits, unpack_bits
from zenfed.config import CompressConfig, parse_config

CODECS: list[Codec] = [
    TopK(fraction=0.1),
    TopK(k=1),
    RandK(fraction=0.3),
    Quantize(bits=1, block=16),
    Quantize(bits=2),
    Quantize(bits=4, block=8),
    Quantize(bits=8),
    Sign(block=16),
    LowRank(rank=2),
    Sketch(fraction=0.5, rows=3),
]

shapes = st.one_of(
    st.tuples(st.integers(1, 300)), st.tuples(st.integers(1, 24), st.integers(1, 24))
)


@st.composite
def tensors(draw: Any) -> torch.Tensor:
    shape = draw(shapes)
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-6, 1e-2, 1.0, 1e3]))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale
    if draw(st.booleans()):  # sparse-ish and constant stretches
        x[x.abs() < scale / 2] = 0.0
    return x


def _sq(t: torch.Tensor) -> float:
    return float((t.double() ** 2).sum())


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: f"{c.name}-{vars(c)}")
@settings(max_examples=40, deadline=None)
@given(x=tensors(), seed=st.integers(0, 2**40))
def test_decode_of_encode_has_the_shape_and_dtype_of_the_input(
    codec: Codec, x: torch.Tensor, seed: int
) -> None:
    parts = codec.encode(x, seed)
    specs = codec.part_specs(tuple(x.shape))
    assert {k: (tuple(t.shape), t.dtype) for k, t in parts.items()} == specs
    y = codec.decode(parts, tuple(x.shape), seed)
    assert y.shape == x.shape and y.dtype == torch.float32


@settings(max_examples=60, deadline=None)
@given(x=tensors(), fraction=st.floats(0.01, 1.0))
def test_topk_keeps_the_largest_exactly_and_contracts(x: torch.Tensor, fraction: float) -> None:
    codec = TopK(fraction=fraction)
    y = codec.decode(codec.encode(x, 0), tuple(x.shape), 0)
    k, n = codec.keep(x.numel()), x.numel()
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept], rtol=0, atol=0)
    assert _sq(x - y) <= (1 - k / n) * _sq(x) * (1 + 1e-9) + 1e-30
    dropped = x[y == 0].abs()
    if dropped.numel() and kept.any():
        assert float(dropped.max()) <= float(x[kept].abs().min())


@settings(max_examples=60, deadline=None)
@given(x=tensors(), bits=st.sampled_from([1, 2, 4, 8]), seed=st.integers(0, 2**40))
def test_quantization_error_is_within_one_step_of_its_block(
    x: torch.Tensor, bits: int, seed: int
) -> None:
    codec = Quantize(bits=bits, block=16)
    parts = codec.encode(x, seed)
    y = codec.decode(parts, tuple(x.shape), seed)
    length, _ = blocks(x.numel(), 16)
    step = parts["step"].repeat_interleave(length)[: x.numel()]
    err = (x.reshape(-1) - y.reshape(-1)).abs()
    assert bool((err <= step * (1 + 1e-4) + 1e-6 * x.abs().max()).all())


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_stochastic_quantization_is_unbiased(bits: int) -> None:
    x = torch.linspace(-1.0, 3.0, 40) ** 3
    codec = Quantize(bits=bits, block=8)
    draws = torch.stack([codec.decode(codec.encode(x, s), (40,), s) for s in range(3000)])
    step = float(codec.encode(x, 0)["step"].max())
    # the mean of 3000 draws is within ~4 standard errors (each draw within one step)
    assert float((draws.mean(0) - x).abs().max()) < 4 * step / 2 / 3000**0.5 + 1e-5
    assert float((draws.std(0)).max()) > 0  # it is stochastic (some values between levels)


@settings(max_examples=60, deadline=None)
@given(x=tensors())
def test_sign_error_is_exactly_the_l1_identity_per_block(x: torch.Tensor) -> None:
    codec = Sign(block=16)
    y = codec.decode(codec.encode(x, 0), tuple(x.shape), 0)
    flat, expected = x.reshape(-1).double(), 0.0
    for b in flat.split(blocks(flat.numel(), 16)[0]):
        expected += float((b**2).sum() - b.abs().sum() ** 2 / b.numel())
    assert _sq(x - y) == pytest.approx(expected, rel=1e-4, abs=1e-6 * _sq(x) + 1e-30)


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 30), n=st.integers(1, 30), rank=st.integers(1, 6), seed=st.integers(0, 99))
def test_lowrank_error_is_the_dropped_singular_values(m: int, n: int, rank: int, seed: int) -> None:
    x = torch.randn(m, n, generator=torch.Generator().manual_seed(seed))
    codec = LowRank(rank=rank)
    y = codec.decode(codec.encode(x, 0), (m, n), 0)
    s = torch.linalg.svdvals(x.double())
    dropped = float((s[rank:] ** 2).sum()) if codec.applies((m, n)) else 0.0
    assert _sq(x - y) == pytest.approx(dropped, rel=1e-3, abs=1e-4)


@settings(max_examples=40, deadline=None)
@given(x=tensors(), seed=st.integers(0, 2**40))
def test_randk_is_exact_on_its_coordinates_and_drops_the_rest(x: torch.Tensor, seed: int) -> None:
    codec = RandK(fraction=0.3)
    y = codec.decode(codec.encode(x, seed), tuple(x.shape), seed).reshape(-1)
    pos = codec.positions(x.numel(), seed)
    torch.testing.assert_close(y[pos], x.reshape(-1)[pos], rtol=0, atol=0)
    mask = torch.ones(x.numel(), dtype=torch.bool)
    mask[pos] = False
    assert bool((y[mask] == 0).all()) and _sq(x - y.view_as(x)) <= _sq(x) * (1 + 1e-9)


def test_count_sketch_is_unbiased_over_hash_seeds() -> None:
    x = torch.randn(64, generator=torch.Generator().manual_seed(0))
    codec = Sketch(fraction=0.5, rows=2)
    est = torch.stack([codec.decode(codec.encode(x, s), (64,), s) for s in range(4000)])
    sd = (_sq(x) / (2 * codec.cols(64))) ** 0.5  # per-value standard deviation bound
    assert float((est.mean(0) - x).abs().max()) < 5 * sd / 4000**0.5


@pytest.mark.parametrize("codec", [c for c in CODECS if c.linear], ids=lambda c: c.name)
@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 200), seed=st.integers(0, 2**40), data=st.data())
def test_linear_codecs_decode_the_sum_to_the_sum_of_decodes(
    codec: Codec, n: int, seed: int, data: Any
) -> None:
    xs = [
        torch.randn(n, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 999))))
        for _ in range(3)
    ]
    encs = [codec.encode(x, seed) for x in xs]
    summed = {k: sum(e[k] for e in encs) for k in encs[0]}
    total = codec.decode(summed, (n,), seed)  # type: ignore[arg-type]
    torch.testing.assert_close(total, sum(codec.decode(e, (n,), seed) for e in encs))


def test_only_randk_and_sketch_declare_linearity() -> None:
    assert {c.name for c in CODECS if c.linear} == {"randk", "sketch"}


@settings(max_examples=50, deadline=None)
@given(bits=st.sampled_from([1, 2, 4, 8]), data=st.data())
def test_bit_packing_round_trips(bits: int, data: Any) -> None:
    n = data.draw(st.integers(1, 40)) * (8 // bits)
    q = torch.tensor(data.draw(st.lists(st.integers(0, 2**bits - 1), min_size=n, max_size=n)))
    packed = pack_bits(q, bits)
    assert packed.numel() == n * bits // 8
    assert torch.equal(unpack_bits(packed, bits), q.to(torch.uint8))


# ---- the pipeline ----------------------------------------------------------------------

SHAPES = {"l.lora_A": (4, 48), "l.lora_B": (48, 4), "bias": (5,)}


def _pipe(*stages: dict[str, Any], error_feedback: bool = True) -> Pipeline:
    cfg = CompressConfig.model_validate(
        {"pipeline": tuple(stages), "error_feedback": error_feedback}
    )
    return Pipeline(cfg, SHAPES)


def _delta(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}


PIPELINES = [
    (),
    ({"codec": "zstd"},),
    ({"codec": "topk", "fraction": 0.1}, {"codec": "quantize", "bits": 4}, {"codec": "zstd"}),
    ({"codec": "randk", "fraction": 0.2}, {"codec": "quantize", "bits": 8}),
    ({"codec": "sign", "block": 64},),
    ({"codec": "lowrank", "rank": 2}, {"codec": "topk", "k": 3}),
    ({"codec": "sketch", "fraction": 0.5, "rows": 2},),
]


@pytest.mark.parametrize(
    "stages", PIPELINES, ids=lambda s: "+".join(x["codec"] for x in s) or "dense"
)
def test_error_feedback_carries_exactly_what_was_dropped(
    stages: tuple[dict[str, Any], ...],
) -> None:
    pipe = _pipe(*stages)
    residual: dict[str, torch.Tensor] = {}
    total_in = {k: torch.zeros(s) for k, s in SHAPES.items()}
    total_sent = {k: torch.zeros(s) for k, s in SHAPES.items()}
    for r in range(4):
        delta = _delta(r)
        corrected = {k: delta[k] + residual.get(k, 0) for k in delta}
        payload, new_residual = pipe.pack(delta, residual, shared_seed=r, private_seed=7)
        sent = pipe.unpack(payload, shared_seed=r)
        for k in SHAPES:
            assert sent[k].shape == SHAPES[k] and sent[k].dtype == torch.float32
            expected = corrected[k] - sent[k]
            got = new_residual.get(k, torch.zeros(SHAPES[k]))
            torch.testing.assert_close(got, expected, rtol=0, atol=0)
            total_in[k] += delta[k]
            total_sent[k] += sent[k]
        residual = new_residual
    for k in SHAPES:  # nothing is lost: what was sent plus what is kept is what was trained
        torch.testing.assert_close(total_sent[k] + residual.get(k, 0), total_in[k])


def test_dense_and_zstd_pipelines_are_lossless() -> None:
    for stages in PIPELINES[:2]:
        pipe = _pipe(*stages)
        delta = _delta(1)
        payload, residual = pipe.pack(delta, {}, shared_seed=0, private_seed=0)
        assert residual == {}
        out = pipe.unpack(payload, shared_seed=0)
        assert all(torch.equal(out[k], delta[k]) for k in SHAPES)


def test_compression_shrinks_the_payload() -> None:
    dense = _pipe().pack(_delta(0), {}, shared_seed=0, private_seed=0)[0]
    small = _pipe(*PIPELINES[2]).pack(_delta(0), {}, shared_seed=0, private_seed=0)[0]
    assert len(small) * 4 < len(dense)  # tiny tensors: the header is much of it


def test_a_parameter_that_does_not_fit_a_tensor_is_refused_up_front() -> None:
    with pytest.raises(CodecError, match="topk k=6 exceeds a tensor of 5 values"):
        _pipe({"codec": "topk", "k": 6})


def test_non_linear_pipelines_are_refused_where_sums_are_all_there_is() -> None:
    _pipe({"codec": "randk"}, {"codec": "sketch"}).require_linear("secure aggregation")
    assert (
        _pipe({"codec": "randk"}).linear and not _pipe({"codec": "randk"}, {"codec": "zstd"}).linear
    )
    for stages in PIPELINES[1:3]:
        with pytest.raises(CodecError, match="cannot run under secure aggregation"):
            _pipe(*stages).require_linear("secure aggregation")


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda b: b[:-5], "not a valid zstd frame"),
        (lambda b: b"\x28\xb5\x2f\xfd" + b"\x00" * 20, "not a valid zstd frame"),
    ],
)
def test_malformed_zstd_payloads_are_named(mangle: Any, message: str) -> None:
    pipe = _pipe(*PIPELINES[2])
    payload = pipe.pack(_delta(0), {}, shared_seed=0, private_seed=0)[0]
    with pytest.raises(CodecError, match=message):
        pipe.unpack(mangle(payload), shared_seed=0)


def test_a_payload_from_another_pipeline_does_not_decode() -> None:
    payload = _pipe({"codec": "topk", "k": 3}).pack(_delta(0), {}, shared_seed=0, private_seed=0)[0]
    # 3 values kept of each of the 3 tensors, where 4 were expected
    with pytest.raises(CodecError, match="entry '#v:float32' is torch.float32 \\(9,\\)"):
        _pipe({"codec": "topk", "k": 4}).unpack(payload, shared_seed=0)
    with pytest.raises(CodecError, match="unexpected entry '#0.idx:int32'"):
        _pipe().unpack(payload, shared_seed=0)


def test_the_wire_groups_every_tensors_part_into_one_entry_and_reads_the_old_layout() -> None:
    """One entry per part kind, not per tensor: the header does not grow with the adapter's
    tensors; a payload of zenfed-update/1 (one entry a part) still decodes the same."""
    import safetensors.torch

    stages = ({"codec": "randk", "fraction": 0.5}, {"codec": "sign"})
    wide: dict[str, tuple[int, ...]] = {f"t{i}": (4, 6) for i in range(64)}
    few: dict[str, tuple[int, ...]] = {"t0": (16, 96)}  # as many values as ``wide``
    cfg = CompressConfig.model_validate({"pipeline": stages})
    sizes = []
    for shapes in (wide, few):
        pipe = Pipeline(cfg, shapes)
        x = {k: torch.randn(s) for k, s in shapes.items()}
        parts = pipe.encode(x, shared_seed=3)
        payload = pipe.to_bytes(parts)
        assert set(safetensors.torch.load(payload)) == {"#1.scale:float32", "#1.bits:uint8"}
        back = pipe.from_bytes(payload)
        assert set(back) == set(parts)
        for k in parts:
            assert torch.equal(back[k], parts[k])
        old = safetensors.torch.save(parts, metadata={"format": "zenfed-update/1"})
        for k, t in pipe.unpack(old, shared_seed=3).items():
            assert torch.equal(t, pipe.unpack(payload, shared_seed=3)[k])
        sizes.append(len(payload) - sum(t.numel() * t.element_size() for t in parts.values()))
    assert sizes[0] < 400 and sizes[0] - sizes[1] < 100, sizes  # the header: constant


@given(
    st.integers(1, 40).flatmap(
        lambda n: st.tuples(
            st.lists(st.floats(-10, 10, allow_nan=False), min_size=n, max_size=n),
            st.integers(1, 9),
            st.floats(0.05, 1.0),
        )
    )
)
@settings(max_examples=60, deadline=None)
def test_block_topk_keeps_the_blocks_of_largest_norm_whole(
    case: tuple[list[float], int, float],
) -> None:
    values, block, fraction = case
    x = torch.tensor(values, dtype=torch.float32)
    codec = TopK(fraction=fraction, block=block)
    units = -(-x.numel() // block)
    k = codec.keep(units)
    y = codec.decode(codec.encode(x, 0), (x.numel(),), 0)
    padded = torch.nn.functional.pad(x, (0, units * block - x.numel())).reshape(units, block)
    kept = (y != 0) | (x == 0)  # a kept block is exact; a dropped one is all zeros
    norms = padded.norm(dim=1)
    got = torch.nn.functional.pad(y, (0, units * block - x.numel())).reshape(units, block)
    whole = [bool(torch.equal(got[i], padded[i])) for i in range(units)]
    dropped = [i for i in range(units) if not whole[i]]
    assert all(bool((got[i] == 0).all()) for i in dropped)
    assert units - len(dropped) >= k or bool(kept.all())
    if dropped:  # every dropped block's norm is at most every kept nonzero one's
        kept_norms = [float(norms[i]) for i in range(units) if whole[i] and norms[i] > 0]
        assert all(float(norms[i]) <= min(kept_norms, default=math.inf) for i in dropped)
    assert float((x - y).square().sum()) <= (1 - k / units) * float(x.square().sum()) + 1e-4


def test_block_topk_sends_one_position_a_block() -> None:
    shapes: dict[str, tuple[int, ...]] = {"lora_B": (576, 8)}
    x = {"lora_B": torch.randn(576, 8)}
    # (fraction, block) -> the positions' part and its size: k gaps, or a bitmap of units
    for fraction, block, part, size in (
        (0.01, 1, "idx", 47),
        (0.01, 8, "idx", 6),
        (0.1, 1, "mask", 4608 // 8),
        (0.1, 8, "mask", 576 // 8),
    ):
        cfg = CompressConfig.model_validate(
            {"pipeline": ({"codec": "topk", "fraction": fraction, "block": block},)}
        )
        parts = Pipeline(cfg, shapes).encode(x, shared_seed=0)
        assert parts[f"lora_B#0.{part}"].numel() == size
    too_many = {"pipeline": ({"codec": "topk", "k": 600, "block": 8},)}
    with pytest.raises(CodecError, match="k=600 exceeds a tensor of 576 blocks of 8"):
        Pipeline(CompressConfig.model_validate(too_many), shapes)


def test_topk_positions_travel_as_a_bitmap_above_one_in_32_and_a_forged_one_is_refused() -> None:
    x = torch.randn(64, 8)
    for fraction, part in ((0.03, "idx"), (0.1, "mask")):
        codec = TopK(fraction=fraction)
        parts = codec.encode(x, 0)
        assert set(parts) == {part, "values"}
        y = codec.decode(parts, (64, 8), 0)
        k = codec.keep(512)
        assert int((y != 0).sum()) == k
        assert float(y.abs().sum()) == pytest.approx(float(x.abs().flatten().topk(k).values.sum()))
    codec = TopK(fraction=0.1)
    parts = codec.encode(x, 0)
    extra = parts["mask"].clone()
    extra[0] |= 0xFF  # more marked positions than k
    with pytest.raises(CodecError, match="bitmap marks"):
        codec.decode({**parts, "mask": extra}, (64, 8), 0)
    odd = TopK(fraction=0.5)
    short = odd.encode(torch.randn(5), 0)  # 5 units in one byte: 3 padding bits
    short["mask"] = short["mask"] | torch.tensor([0x80], dtype=torch.uint8)
    with pytest.raises(CodecError, match="padding included"):
        odd.decode(short, (5,), 0)


def test_topk_indices_out_of_order_or_range_are_refused() -> None:
    pipe = _pipe({"codec": "topk", "k": 3})
    parts = pipe.encode(_delta(0), shared_seed=0)
    bad = dict(parts)
    bad["l.lora_A#0.idx"] = torch.tensor([0, 2, 0], dtype=torch.int32)  # 3 of 192: gaps
    with pytest.raises(CodecError, match="not strictly increasing"):
        pipe.decode(bad, shared_seed=0)
    bad["l.lora_A#0.idx"] = torch.tensor([1, 2, 190], dtype=torch.int32)
    with pytest.raises(CodecError, match="outside a tensor of 192"):
        pipe.decode(bad, shared_seed=0)


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        ({"codec": "topz"}, "unknown codec 'topz'"),
        ({"codec": "quantize", "bits": 3}, "bits"),
        ({"codec": "topk", "fraction": 1.5}, "fraction must be in"),
        ({"codec": "topk", "block": 0}, "topk block must be at least 1"),
        ({"codec": "quantize", "block": 12}, "multiple of 8"),
        ({"codec": "topk", "frac": 0.1}, "unknown key"),
    ],
)
def test_codec_config_errors_are_named(stage: dict[str, Any], message: str) -> None:
    from zenfed.errors import ZenfedError

    with pytest.raises(ZenfedError, match=message):
        parse_config({"data": {"categories": ["ai"]}, "compress": {"pipeline": [stage]}})


def test_pipeline_order_is_checked() -> None:
    from zenfed.errors import ZenfedError

    for stages, message in [
        ([{"codec": "zstd"}, {"codec": "topk"}], "put it last"),
        ([{"codec": "sign"}, {"codec": "topk"}], "leaves no float values"),
    ]:
        with pytest.raises(ZenfedError, match=message):
            parse_config({"data": {"categories": ["ai"]}, "compress": {"pipeline": stages}})


@settings(max_examples=30, deadline=None)
@given(x=tensors(), level=st.integers(1, 19))
def test_zstd_is_lossless_on_any_tensor(x: torch.Tensor, level: int) -> None:
    pipe = Pipeline(
        CompressConfig.model_validate({"pipeline": ({"codec": "zstd", "level": level},)}),
        {"t": tuple(x.shape)},
    )
    payload, residual = pipe.pack({"t": x}, {}, shared_seed=0, private_seed=0)
    assert residual == {}
    assert torch.equal(pipe.unpack(payload, shared_seed=0)["t"], x)
