"""The house's parts, each proven end to end in the simulation and over HTTP: participants
training different adapter shapes (ranks 4 and 8, personal layers) in one federation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import select

from tests.conftest import tiny_config
from tests.integration.test_deploy import (
    CATEGORIES,
    FED_TOML,
    _finish,
    _join,
    _port,
    _serve,
    _wait_healthy,
)
from tests.integration.test_deploy import procs as procs
from tests.integration.test_hardening import Agent, _status, wait_for
from tests.loopback import serving
from zenfed.config import parse_config
from zenfed.errors import ZenfedError
from zenfed.protocol.adapter import AdapterSpec
from zenfed.protocol.manifest import Manifest, check_chain
from zenfed.service.persistent import PersistentCoordinator
from zenfed.sim import run_simulation
from zenfed.sim.runner import load_run
from zenfed.sim.setup import build_world
from zenfed.store.blobs import BlobStore
from zenfed.store.db import Database, Version
from zenfed.store.db import Update as UpdateRow

pytestmark = pytest.mark.integration

LAYER0 = "base_model.model.model.layers.0.self_attn.q_proj"


def test_a_simulation_trains_ranks_4_and_8_and_personal_layers_in_one_federation(
    tmp_path: Path,
) -> None:
    cfg = tiny_config(
        data={"categories": ["ai", "emotion", "literature", "food"]},
        sampling={"fraction": 1.0, "min_participants": 4},
        train={"lr": 1e-2, "local_steps": 2},
        run={"rounds": 2},
        adapters={
            "assign": {"ai": {"r": 4}, "emotion": {"r": 4}, "food": {"personal": ["layers.0."]}}
        },
    )
    world = build_world(cfg)
    summary = run_simulation(cfg, tmp_path, fresh=True, world=world)
    assert summary["fed_loss"] < summary["initial_loss"]
    assert sorted(world.shaped) == ["p:layers.0.", "r4"]  # one model per distinct shape
    r4 = world.shaped["r4"].model
    a = dict(r4.named_parameters())[f"{LAYER0}.lora_A.default.weight"]
    assert tuple(a.shape) == (4, 64)  # the rank-4 participants train rank 4
    state, parts, _ = load_run(tmp_path)
    assert [len(v.participants) for v in state.versions[1:]] == [4, 4]
    manifests = [  # the version log beside the versions, chained from the root
        Manifest.from_dict(
            json.loads((tmp_path / "versions" / f"{v.id}.manifest.json").read_text())
        )
        for v in state.versions
    ]
    check_chain(manifests)
    assert [m.digest for m in manifests] == [v.manifest for v in state.versions]
    assert {u.adapter for u in manifests[-1].updates} == {"", "r4", "p:layers.0."}
    food = parts["food"].extra
    assert set(food["personal"]) == {k for k in state.params if ".layers.0." in k}
    # food's own layer 0 moved away from the global one, which only the others trained
    key = f"{LAYER0}.lora_B.weight"
    assert not torch.equal(food["personal"][key], state.params[key])
    assert "error_feedback/r4" not in food and "error_feedback/p:layers.0." in food


def _fed(
    tmp: Path, lines: dict[str, Any] | None = None, minimum: int = 4, **adapters: Any
) -> PersistentCoordinator:
    initial = {
        "m.layers.0.q.lora_A.weight": torch.zeros(8, 6),
        "m.layers.0.q.lora_B.weight": torch.zeros(5, 8),
    }
    cfg = parse_config(
        {
            "data": {"categories": ["ai"]},
            "sampling": {"fraction": 1.0, "min_participants": minimum},
            "run": {"rounds": 1},
            "service": {"long_poll_s": 1.0, "max_weight_share": 1.0},
            "adapters": adapters,
            "lines": lines or {},
        }
    )
    db = Database(f"sqlite:///{tmp / 'f.db'}")
    return PersistentCoordinator(cfg, initial, db, BlobStore(tmp / "blobs"))


def test_mixed_ranks_over_http_each_update_names_and_decodes_as_its_spec(tmp_path: Path) -> None:
    fed = _fed(tmp_path, assign={"a4": {"r": 4}, "b4": {"r": 4}})
    values = {"a4": (1.0, 10), "b4": (2.0, 30), "a8": (4.0, 20), "b8": (8.0, 40)}
    with serving(fed) as url:
        agents = {n: Agent(url, n) for n in values}
        for n, a in agents.items():
            a.enroll(examples=values[n][1], poll=False)
        for a in agents.values():
            assert a.get("/v1/task?wait=0").status_code in (200, 204)
        tasks = {n: a.task() for n, a in agents.items()}
        assert tasks["a4"]["adapter"] == {"rank": 4, "layers": None, "personal": []}
        assert tasks["a8"]["adapter"] is None
        wrong = agents["a4"].upload(tasks["a4"], _payload(fed, tasks["a4"], 1.0, AdapterSpec()))
        assert wrong.status_code == 422 and "adapter spec" in wrong.json()["error"]
        for n, a in agents.items():
            spec = AdapterSpec(rank=4) if n.endswith("4") else AdapterSpec()
            body = _payload(fed, tasks[n], values[n][0], spec)
            r = a.upload(tasks[n], body, num_examples=values[n][1], adapter=spec.id)
            assert r.status_code == 200, r.text
        wait_for(lambda: _status(agents["a4"].http)["round"] == 1)
    a = fed.engine.state.params["m.layers.0.q.lora_A.weight"]  # the unit test's worked numbers
    torch.testing.assert_close(a[:4], torch.full((4, 6), 4.7))
    torch.testing.assert_close(a[4:], torch.full((4, 6), 4.0))


def _payload(
    fed: PersistentCoordinator, task: dict[str, Any], value: float, spec: AdapterSpec
) -> bytes:
    codec = fed.engine.codec_for(spec)
    tensors = {k: torch.full(s, value) for k, s in spec.shapes(fed.engine.shapes).items()}
    return codec.to_bytes(codec.encode(tensors, shared_seed=task["codec_seed"]))


def test_zenfed_join_agents_build_the_shape_their_tasks_give(tmp_path: Path, procs: list) -> None:
    toml = tmp_path / "federation.toml"
    toml.write_text(FED_TOML + "\n[adapters.assign]\nai = { r = 4 }\n")
    port, state = _port(), tmp_path / "state"
    server = _serve(toml, state, port)
    procs.append(server)
    url = f"http://127.0.0.1:{port}"
    _wait_healthy(url, server)
    agents = [_join(url, state, tmp_path, c) for c in CATEGORIES]
    procs.extend(agents)
    _finish(agents)
    db = Database(f"sqlite:///{state / 'zenfed.db'}")
    with db.transaction() as s:
        ups = s.scalars(select(UpdateRow)).all()
        specs = {(u.meta or {}).get("adapter", "") for u in ups}
        versions = s.scalars(select(Version).where(Version.round >= 0)).all()
    db.close()
    assert specs == {"", "r4"} and len(ups) == 6  # ai sent rank 4, the others rank 8
    assert [len(v.participants) for v in versions] == [3, 3]


def test_a_simulation_of_two_lines_gives_each_line_the_versions_of_its_members_alone(
    tmp_path: Path,
) -> None:
    both = {"categories": ["ai", "emotion", "literature", "food"]}
    common: dict[str, Any] = {
        "sampling": {"fraction": 1.0, "min_participants": 2},
        "train": {"lr": 1e-2, "local_steps": 2},
        "run": {"rounds": 2},
    }
    lines = {"names": ["words", "life"], "assign": {"literature": "life", "food": "life"}}
    two = tiny_config(data=both, lines=lines, **common)
    summary = run_simulation(two, tmp_path / "two")
    assert set(summary["lines"]) == {"words", "life"}
    with pytest.raises(ZenfedError, match="already holds a run"):  # its folder is a run's
        run_simulation(two, tmp_path / "two")
    for line, members in (("words", ["ai", "emotion"]), ("life", ["literature", "food"])):
        alone = tiny_config(data={"categories": members}, lines={"names": [line]}, **common)
        run_simulation(alone, tmp_path / line)
        got, _, _ = load_run(tmp_path / "two" / "lines" / line)
        want, _, _ = load_run(tmp_path / line)
        assert [v.id for v in got.versions] == [v.id for v in want.versions]
        assert len(got.versions) == 3
        assert all(torch.equal(got.params[k], want.params[k]) for k in got.params)
        assert {tuple(v.participants) for v in got.versions[1:]} == {tuple(sorted(members))}
        folder = tmp_path / "two" / "lines" / line / "versions"
        assert json.loads((folder / f"{got.version.id}.manifest.json").read_text())["line"] == line
        assert summary["lines"][line]["fed_loss"] < summary["lines"][line]["initial_loss"]
    words, life = (load_run(tmp_path / "two" / "lines" / x)[0] for x in ("words", "life"))
    assert words.versions[0].id != life.versions[0].id  # each line its own root


def test_two_lines_over_http_route_each_upload_to_its_sender_s_line(tmp_path: Path) -> None:
    two = {"names": ["x", "y"], "assign": {"y1": "y", "y2": "y"}}
    fed = _fed(tmp_path, lines=two, minimum=2)  # (a line's cohort: its members)
    values = {"x1": 1.0, "x2": 3.0, "y1": 10.0, "y2": 30.0}
    with serving(fed) as url:
        agents = {n: Agent(url, n) for n in values}
        for a in agents.values():
            a.enroll(examples=10)
        tasks = {n: a.task() for n, a in agents.items()}
        assert {n: t["line"] for n, t in tasks.items()} == dict(x1="x", x2="x", y1="y", y2="y")
        for n, a in agents.items():
            r = a.upload(tasks[n], _payload(fed, tasks[n], values[n], AdapterSpec()))
            assert r.status_code == 200, r.text
        wait_for(lambda: _status(agents["x1"].http)["lines"]["y"]["round"] == 1)
        wait_for(lambda: _status(agents["x1"].http)["lines"]["x"]["round"] == 1)
        status = _status(agents["x1"].http)
    x, y = fed.lines["x"].engine.state, fed.lines["y"].engine.state
    torch.testing.assert_close(x.params["m.layers.0.q.lora_A.weight"], torch.full((8, 6), 2.0))
    torch.testing.assert_close(y.params["m.layers.0.q.lora_A.weight"], torch.full((8, 6), 20.0))
    assert status["lines"]["y"]["version"] == y.version.id != x.version.id
