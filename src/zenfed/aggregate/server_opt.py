"""Server optimizers: one step on the pseudo-gradient, as (params, state) -> (params, state).

    params, state = server_step(cfg, params, mean_delta, state)

The pseudo-gradient is g = -mean_delta (the global adapter minus the participants'
average). Implemented, following Reddi et al. 2021 ("Adaptive Federated Optimization"):
- ``fedavg``:   x <- x - lr * g                 (lr = 1 is plain averaging)
- ``fedavgm``:  m <- beta m + g;  x <- x - lr * m            (Hsu et al. 2019)
- ``nesterov``: m <- beta m + g;  x <- x - lr * (g + beta m) (DiLoCo's outer step,
                Douillard et al. 2023: lr 0.7, momentum 0.9)
- ``fedadam``:  m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;  x <- x - lr m/(sqrt(v)+tau)
- ``fedyogi``:  as fedadam but v <- v - (1-b2) g^2 sign(v - g^2)
State is a frozen dataclass of named tensors; nothing is mutated in place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch

from zenfed.config import ServerConfig
from zenfed.tensors import Tensors


@dataclass(frozen=True)
class ServerOptState:
    """First and second moments of the pseudo-gradient (empty until first used)."""

    m: Tensors = field(default_factory=dict)
    v: Tensors = field(default_factory=dict)
    step: int = 0


def server_step(
    cfg: ServerConfig, params: Tensors, mean_delta: Tensors, state: ServerOptState
) -> tuple[Tensors, ServerOptState]:
    """Apply one server optimizer step; returns new params and new state."""
    g = {k: -d for k, d in mean_delta.items()}
    step = _STEPS[cfg.optimizer]
    return step(cfg, params, g, state)


def _fedavg(
    cfg: ServerConfig, x: Tensors, g: Tensors, s: ServerOptState
) -> tuple[Tensors, ServerOptState]:
    return {k: x[k] - cfg.lr * g[k] for k in x}, ServerOptState(step=s.step + 1)


def _momentum(
    cfg: ServerConfig, x: Tensors, g: Tensors, s: ServerOptState, nesterov: bool
) -> tuple[Tensors, ServerOptState]:
    m = {k: cfg.momentum * s.m[k] + g[k] if s.m else g[k].clone() for k in x}
    direction = {k: g[k] + cfg.momentum * m[k] for k in x} if nesterov else m
    return {k: x[k] - cfg.lr * direction[k] for k in x}, ServerOptState(m=m, step=s.step + 1)


def _adaptive(
    cfg: ServerConfig, x: Tensors, g: Tensors, s: ServerOptState, yogi: bool
) -> tuple[Tensors, ServerOptState]:
    b1, b2 = cfg.beta1, cfg.beta2
    zeros = {k: torch.zeros_like(x[k]) for k in x}
    m0, v0 = s.m or zeros, s.v or zeros
    m = {k: b1 * m0[k] + (1 - b1) * g[k] for k in x}
    if yogi:
        v = {k: v0[k] - (1 - b2) * g[k] ** 2 * torch.sign(v0[k] - g[k] ** 2) for k in x}
    else:
        v = {k: b2 * v0[k] + (1 - b2) * g[k] ** 2 for k in x}
    new_x = {k: x[k] - cfg.lr * m[k] / (v[k].sqrt() + cfg.tau) for k in x}
    return new_x, ServerOptState(m=m, v=v, step=s.step + 1)


_STEPS: dict[str, Callable[..., tuple[Tensors, ServerOptState]]] = {
    "fedavg": _fedavg,
    "fedavgm": partial(_momentum, nesterov=False),
    "nesterov": partial(_momentum, nesterov=True),
    "fedadam": partial(_adaptive, yogi=False),
    "fedyogi": partial(_adaptive, yogi=True),
}
SERVER_OPTIMIZERS = tuple(_STEPS)
