"""Build the in-process world of a simulation: one shared model, N virtual participants.

world = build_world(cfg)
world.participants["tech_support"].train(task, fetch)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import zip_longest

from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from zenfed.config import AttackConfig, FederationConfig
from zenfed.data.examples import ParticipantData
from zenfed.data.federated import build_participants, load_validation
from zenfed.model.adapter import get_adapter_state
from zenfed.model.build import adapter_model
from zenfed.participant.agent import Participant, Runtime
from zenfed.protocol.adapter import AdapterSpec
from zenfed.sim.attacks import BackdoorPoison
from zenfed.tensors import Tensors
from zenfed.train.evaluate import adapter_loss


@dataclass
class World:
    """The model, tokenizer, initial adapter and participants of one simulation."""

    model: PeftModel
    tokenizer: PreTrainedTokenizerBase
    initial: Tensors
    runtime: Runtime
    data: list[ParticipantData]
    participants: dict[str, Participant]
    cfg: FederationConfig  # what the model, adapter and data were built from
    shaped: dict[str, Runtime] = field(default_factory=dict)  # other adapter shapes' models

    def runtime_for(self, spec: AdapterSpec) -> Runtime:
        """The model of adapter shape ``spec``: one per shape, however many train it."""
        if not spec.id:
            return self.runtime
        if spec.id not in self.shaped:
            model, _ = adapter_model(self.cfg, spec)
            rt = self.runtime
            self.shaped[spec.id] = Runtime(model, rt.pad_id, rt.train, rt.compress, spec=spec)
        return self.shaped[spec.id]

    def configure(self, cfg: FederationConfig) -> None:
        """Every model follows ``cfg``'s training and compression (a reused world)."""
        for rt in (self.runtime, *self.shaped.values()):
            rt.configure(cfg.train, cfg.compress)

    def fits(self, cfg: FederationConfig) -> bool:
        """Whether a run of ``cfg`` may reuse this world (same model, adapter, data, seed)."""
        a, b = self.cfg, cfg
        same = (a.model, a.lora, a.data, a.run.seed) == (b.model, b.lora, b.data, b.run.seed)
        return same and _poisoned(a) == _poisoned(b)

    def validation_loss(self, cfg: FederationConfig) -> Callable[[Tensors], float] | None:
        """What ``[gate]`` judges candidates by: the loss on the operator's validation file,
        or on the participants' held-out splits (taken in turn, up to
        ``gate.max_examples``); None without a gate source."""
        g = cfg.gate
        if g.source == "none":
            return None
        if g.source == "validation_file":
            assert g.validation_file is not None
            examples = load_validation(g.validation_file, cfg.data, self.tokenizer, g.max_examples)
        else:
            turns = zip_longest(*(d.heldout for d in self.data))
            examples = [e for row in turns for e in row if e is not None][: g.max_examples]
        pad = int(self.tokenizer.pad_token_id)
        return adapter_loss(self.model, examples, cfg.train.batch_size, pad)


def build_world(cfg: FederationConfig) -> World:
    """Load the base model, attach LoRA (seeded), build every participant's data."""
    model, tok = adapter_model(cfg)
    poison = BackdoorPoison(cfg.attack, cfg.run.seed) if _poisoned(cfg) else None
    data = build_participants(cfg.data, tok, cfg.run.seed, poison)
    runtime = Runtime(
        model=model, pad_id=int(tok.pad_token_id), train=cfg.train, compress=cfg.compress
    )
    initial = get_adapter_state(model)  # one copy, the root every participant holds
    world = World(model, tok, initial, runtime, data, {}, cfg)
    for d in data:
        world.participants[d.name] = Participant(
            d.name, d, runtime, origin=initial, runtimes=world.runtime_for
        )
    return world


def _poisoned(cfg: FederationConfig) -> AttackConfig | None:
    """The attack that changes the participants' data (a backdoor), if any."""
    return cfg.attack if cfg.attack.kind == "backdoor" else None
