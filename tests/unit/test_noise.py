"""DP noise sources (zenfed.noise): both give N(0, std^2); the secure one comes
from the ChaCha20 stream, and privacy.secure_noise routes every noise draw through it."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats

from tests.unit.test_privacy import _VKS, IDS, INITIAL, _cfg, _dense, _secure_round, _update
from zenfed import noise
from zenfed.coordinator import Coordinator
from zenfed.errors import ZenfedError
from zenfed.train.dp_sgd import RecordDP, private_gradients


@pytest.mark.parametrize("secure", [False, True])
def test_both_sources_draw_the_stated_gaussian(secure: bool) -> None:
    x = noise.gaussian((400, 500), 3.0, secure=secure)
    assert x.shape == (400, 500) and x.dtype == np.float64
    flat = x.reshape(-1)
    assert abs(flat.mean()) < 5 * 3.0 / math.sqrt(flat.size)
    assert flat.std() == pytest.approx(3.0, rel=0.01)
    assert stats.kstest(flat / 3.0, "norm").pvalue > 1e-4  # Gaussian, not just the moments
    assert noise.gaussian((), 1.0, secure=secure).shape == ()


def test_secure_draws_are_fresh_chacha20_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy(monkeypatch)
    a, b = noise.gaussian((1000,), 1.0, secure=True), noise.gaussian((1000,), 1.0, secure=True)
    assert not np.array_equal(a, b)
    assert calls == [2000] * (2 * noise.DRAWS)  # 4 draws of 2 uniforms per value, each call
    u = noise._uniforms(100_000)
    assert u.min() > 0.0 and u.max() < 1.0 and u.mean() == pytest.approx(0.5, abs=0.005)


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the size of every secure stream drawn."""
    calls: list[int] = []
    real = noise._uniforms

    def spy(n: int) -> np.ndarray:
        calls.append(n)
        return real(n)

    monkeypatch.setattr(noise, "_uniforms", spy)
    return calls


@pytest.mark.parametrize("kind", ["central", "distributed"])
def test_secure_noise_is_what_the_federation_draws(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    privacy: dict[str, Any] = {"clip_norm": 1.0, "noise_multiplier": 1.0, "secure_noise": True}
    if kind == "distributed":
        privacy["noise"] = "distributed"
    cfg = _cfg(
        sampling={"method": "poisson", "fraction": 1.0},
        privacy=privacy,
        secagg={"enabled": kind == "distributed", "min_survivors": 8},
    )
    c = Coordinator(cfg, INITIAL, {p: 10 for p in IDS}, verify_keys=_VKS)
    calls = _spy(monkeypatch)
    zero = {p: {k: torch.zeros_like(v) for k, v in INITIAL.items()} for p in IDS}
    if kind == "central":
        for t in c.open_round():
            assert t.secure_noise  # the participants are told too (their DP-SGD noise)
            c.submit(_update(c, t.participant, _dense(c, zero[t.participant])))
    else:
        _secure_round(c, zero)
    c.close_round()
    flat = torch.cat([v.reshape(-1) for v in c.state.params.values()])
    # z C = 1 on the sum over q N = 8 (distributed: 8 shares of stddev 1 / sqrt(8))
    assert float(flat.std()) == pytest.approx(0.125, rel=0.05)
    # the update's own noise came from the stream (2 uniforms a value: at least the 40 x 50
    # tensor's), not only the clip count's
    assert max(calls) >= 2 * 40 * 50, calls


def test_dp_sgd_noise_comes_from_the_secure_stream_when_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = torch.nn.Linear(3, 2)
    params = dict(model.named_parameters())
    calls = _spy(monkeypatch)
    gen = torch.Generator().manual_seed(0)
    private_gradients(model, params, None, RecordDP(1.0, 1.0), 1.0, gen)
    assert calls == []
    private_gradients(model, params, None, RecordDP(1.0, 1.0, secure=True), 1.0, gen)
    assert len(calls) == 2 * noise.DRAWS  # weight and bias


def test_dp_ftrl_with_secure_noise_is_refused() -> None:
    with pytest.raises(ZenfedError, match="drop privacy.secure_noise"):
        _cfg(
            sampling={"method": "epochs", "fraction": 0.5},
            privacy={
                "clip_norm": 1.0,
                "noise_multiplier": 1.0,
                "mechanism": "tree",
                "secure_noise": True,
            },
        )
