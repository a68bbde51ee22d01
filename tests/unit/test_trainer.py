import itertools
import math
from typing import Any

import pytest
import torch

from zenfed.config import DataConfig, LoraConfig, ModelConfig, TrainConfig
from zenfed.data import build_participants
from zenfed.errors import NonFiniteLossError
from zenfed.model import attach_lora, get_adapter_state, load_base_model
from zenfed.model.adapter import adapter_parameters
from zenfed.train import StepPlan, evaluate, train_local
from zenfed.train.batching import batches
from zenfed.train.trainer import _accumulate, lr_at, micro_batch_size


@pytest.fixture(scope="module")
def setup(tokenizer: Any) -> Any:
    base, _ = load_base_model(ModelConfig(name="tiny-llama"))
    torch.manual_seed(0)
    model = attach_lora(base, LoraConfig(r=4, alpha=8))
    (data,) = build_participants(DataConfig(categories=("ai",), max_seq_len=64), tokenizer, 0)
    return model, data, int(tokenizer.pad_token_id)


def _train(setup: Any, cfg: TrainConfig, steps: int = 3, start: Any = None, **kw: Any) -> Any:
    model, data, pad = setup
    start = start if start is not None else get_adapter_state(model)
    return train_local(model, data.train, cfg, start, StepPlan(seed=7, steps=steps), pad, **kw)


@pytest.mark.integration  # trains the model
def test_training_lowers_the_training_loss(setup: Any) -> None:
    model, data, pad = setup
    start = get_adapter_state(model)
    before = evaluate(model, data.train, 16, pad).loss
    res = _train(setup, TrainConfig(lr=1e-2, local_steps=20, batch_size=8), steps=20, start=start)
    after_state = {k: start[k] + res.delta[k] for k in start}
    from zenfed.model import set_adapter_state

    set_adapter_state(model, after_state)
    assert evaluate(model, data.train, 16, pad).loss < before - 0.1
    assert res.steps == 20 and res.examples_seen == 160 and res.num_examples == len(data.train)
    assert res.num_tokens > 0 and res.seconds > 0
    set_adapter_state(model, start)


def test_memory_budget_picks_micro_batches_with_the_same_gradient(setup: Any) -> None:
    model, data, pad = setup
    tiny = TrainConfig(batch_size=8, memory_budget_mb=1)
    assert micro_batch_size(model, tiny, 64) < 8
    assert micro_batch_size(model, TrainConfig(batch_size=8), 64) == 8
    batch = next(batches(data.train, 8, seed=3, pad_id=pad))
    params = adapter_parameters(model)
    grads = []
    for micro in (8, 2):
        model.zero_grad(set_to_none=True)
        _, n, used = _accumulate(model, batch, micro)
        assert used == micro and n > 0
        grads.append({k: p.grad.clone() for k, p in params.items() if p.grad is not None})
    model.zero_grad(set_to_none=True)
    assert grads[0]
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-4, atol=1e-7)


@pytest.mark.integration  # trains the model
def test_proximal_term_keeps_the_update_closer_to_the_start(setup: Any) -> None:
    free = _train(setup, TrainConfig(lr=1e-2), steps=5)
    prox = _train(setup, TrainConfig(lr=1e-2, proximal_mu=100.0), steps=5)
    norm = lambda d: torch.sqrt(sum((v**2).sum() for v in d.values()))  # noqa: E731
    assert norm(prox.delta) < norm(free.delta)


@pytest.mark.integration  # trains the model
def test_kept_optimizer_state_continues_adam(setup: Any) -> None:
    cfg = TrainConfig(lr=1e-2, keep_optimizer_state=True)
    first = _train(setup, cfg, steps=2)
    assert first.optimizer_state is not None
    steps = [s["step"] for s in first.optimizer_state["state"].values()]
    assert all(float(s) == 2 for s in steps)
    second = _train(setup, cfg, steps=1, optimizer_state=first.optimizer_state)
    assert all(float(s["step"]) == 3 for s in second.optimizer_state["state"].values())
    assert _train(setup, TrainConfig(lr=1e-2), steps=1).optimizer_state is None


def test_nan_loss_is_an_error_and_restores_the_start(setup: Any) -> None:
    model = setup[0]
    start = get_adapter_state(model)
    poisoned = {
        k: torch.full_like(v, float("nan")) if "lora_B" in k else v for k, v in start.items()
    }
    with pytest.raises(NonFiniteLossError, match="loss became nan at local step 1"):
        _train(setup, TrainConfig(), start=poisoned)
    assert all(torch.isnan(v).all() for k, v in get_adapter_state(model).items() if "lora_B" in k)
    from zenfed.model import set_adapter_state

    set_adapter_state(model, start)


def test_cosine_schedule_with_warmup() -> None:
    cfg = TrainConfig(lr=1.0, lr_schedule="cosine", warmup_fraction=0.1)
    lrs = [lr_at(cfg, s, 100, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert lr_at(TrainConfig(lr=1.0), 50, 100, 1.0) == 1.0


def test_dp_sgd_clips_each_example_and_adds_the_stated_noise(setup: Any) -> None:
    from zenfed.train.batching import collate
    from zenfed.train.dp_sgd import RecordDP, private_gradients
    from zenfed.train.loss import loss_sum

    model, data, pad = setup
    params = adapter_parameters(model)
    batch = collate(data.train[:4], pad)
    gen = torch.Generator().manual_seed(0)
    # no clipping in effect, no noise: the mean of the per-example mean-loss gradients
    private_gradients(model, params, batch, RecordDP(1e9, 0.0), 4.0, gen)
    got = {k: p.grad.clone() for k, p in params.items()}
    model.zero_grad(set_to_none=True)
    for i in range(4):
        s, n = loss_sum(model, {k: v[i : i + 1] for k, v in batch.items()})
        (s / n / 4).backward()
    for k, p in params.items():
        torch.testing.assert_close(got[k], p.grad, rtol=1e-4, atol=1e-7)
    model.zero_grad(set_to_none=True)
    # a tight bound: the summed gradient has norm <= examples x C
    private_gradients(model, params, batch, RecordDP(1e-3, 0.0), 1.0, gen)
    norm = sum(float(p.grad.pow(2).sum()) for p in params.values()) ** 0.5
    assert norm <= 4 * 1e-3 * (1 + 1e-5)
    # an empty Poisson batch: only noise, of stddev z C / expected (from either source)
    for secure in (False, True):
        private_gradients(model, params, None, RecordDP(2.0, 1.5, secure), 8.0, gen)
        flat = torch.cat([p.grad.reshape(-1) for p in params.values()])
        assert float(flat.std()) == pytest.approx(1.5 * 2.0 / 8.0, rel=0.05)
        model.zero_grad(set_to_none=True)


def test_dp_sgd_training_runs_and_poisson_batches_vary(setup: Any) -> None:
    from zenfed.train.dp_sgd import RecordDP, poisson_batches

    _model, data, pad = setup
    sizes = [
        0 if b is None else b["input_ids"].shape[0]
        for b in itertools.islice(poisson_batches(data.train, 4, 0, pad), 200)
    ]
    assert abs(sum(sizes) / len(sizes) - 4) < 0.6 and len(set(sizes)) > 3
    res = _train(
        setup, TrainConfig(lr=1e-2, local_steps=3, batch_size=4), record_dp=RecordDP(1.0, 1.0)
    )
    assert res.steps == 3 and all(torch.isfinite(v).all() for v in res.delta.values())


@pytest.mark.parametrize("steps", [1, 3])
def test_a_rounds_update_stays_within_the_planners_reach(setup: Any, steps: int) -> None:
    """The privacy planner takes a round's update to move each trained value by about lr
    a local step (AdamW), so its norm by at most lr x steps x sqrt(values); a fresh
    optimizer's first step moves every value with a gradient by lr, no more."""
    from zenfed.privacy.planner import update_reach

    cfg = TrainConfig(lr=1e-2, local_steps=steps, batch_size=8)
    res = _train(setup, cfg, steps=steps)
    moved = torch.cat([v.flatten() for v in res.delta.values()]).double()
    reach = update_reach(cfg)
    assert reach is not None and float(moved.norm()) <= reach * math.sqrt(moved.numel())
    if steps == 1:  # (later steps can move a value a little more than lr, not on RMS)
        assert float(moved.abs().max()) <= reach * (1 + 1e-6)
        nonzero = moved[moved != 0].abs()
        # lr g / (|g| + eps): within 1 % of lr unless |g| is within 100x AdamW's eps
        # (1e-8); the tiny random model has a few such values (about 1 % on some CPUs),
        # so the reach must be what most values move by, not every one
        assert nonzero.numel() > 0 and float(nonzero.median()) > 0.99e-2
        assert float((nonzero > 0.99e-2).double().mean()) > 0.9
