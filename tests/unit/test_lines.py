"""Model lines: several chains of versions in one coordinator, each trained by its
members, routed by the sender's line, stored keyed by line, recovered after a restart."""

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.unit.test_persistent import INITIAL, Clock, _fed, _join, _upload
from tests.unit.test_persistent import store as store
from zenfed.config import FederationConfig, parse_config
from zenfed.coordinator import Coordinator
from zenfed.coordinator.lines import UnknownLine
from zenfed.errors import ZenfedError
from zenfed.protocol.messages import root_version
from zenfed.service.recompute import check_manifests, recompute_versions
from zenfed.store.db import Database, Round, Version

TWO = {"names": ["a", "b"], "assign": {"b1": "b", "b2": "b"}}


def _cfg(lines: dict[str, Any]) -> FederationConfig:
    return parse_config(
        {
            "data": {"categories": ["ai"]},
            "server": {"optimizer": "fedavgm", "lr": 1.0, "momentum": 0.5},
            "sampling": {"fraction": 1.0, "min_participants": 2},
            "run": {"rounds": 3},
            "service": {"quorum": 1.0, "round_timeout_s": 60.0, "max_weight_share": 1.0},
            "lines": lines,
        }
    )


def test_a_line_that_does_not_exist_is_refused_by_name() -> None:
    with pytest.raises(ZenfedError, match="puts 'b1' on line 'c', which is not in lines.names"):
        _cfg({"names": ["a", "b"], "assign": {"b1": "c"}})
    with pytest.raises(ZenfedError, match="'Legal team' is not a line name"):
        _cfg({"names": ["Legal team"]})
    with pytest.raises(ZenfedError, match="lists a line twice"):
        _cfg({"names": ["a", "a"]})
    with pytest.raises(ZenfedError, match="no model line 'c'"):
        Coordinator(_cfg(TWO), INITIAL, {}, line="c")
    cfg = _cfg(TWO)
    assert (cfg.lines.line_of("b2"), cfg.lines.line_of("anyone")) == ("b", "a")


def test_each_line_but_main_starts_from_a_root_of_its_own_id() -> None:
    main = root_version(INITIAL)
    assert main.id == root_version(INITIAL, "main").id  # the default line is as before
    assert len({main.id, root_version(INITIAL, "a").id, root_version(INITIAL, "b").id}) == 3
    assert {root_version(INITIAL, x).content for x in ("main", "a")} == {main.content}


def _round(fed: Any, values: dict[str, float]) -> None:
    """Every named member uploads ``values[name]`` (all tensors) to its line's round."""
    fed.upload_many([_upload(fed, pid, v) for pid, v in values.items()])


@pytest.mark.usefixtures("store")
def test_two_lines_train_apart_and_each_equals_a_federation_of_its_members_alone(
    tmp_path: Path,
) -> None:
    clock = Clock()
    fed = _fed(tmp_path / "two", clock, _cfg(TWO))
    pids = {n: _join(fed, n)[0] for n in ("a1", "a2", "b1", "b2")}
    fed.tick()
    tasks = {n: fed.next_task(p) for n, p in pids.items()}
    assert {n: t.line for n, t in tasks.items() if t} == {
        "a1": "a",
        "a2": "a",
        "b1": "b",
        "b2": "b",
    }
    assert tasks["a1"] and tasks["b1"] and tasks["a1"].version != tasks["b1"].version
    ups = {pids[n]: v for n, v in (("a1", 1.0), ("b1", 10.0), ("a2", 3.0), ("b2", 30.0))}
    _round(fed, ups)  # one batch across both lines: each update to its sender's line
    fed.tick()
    a, b = fed.lines["a"].engine, fed.lines["b"].engine
    torch.testing.assert_close(a.state.params["a"], torch.full((2, 3), 2.0))
    torch.testing.assert_close(b.state.params["a"], torch.full((2, 3), 20.0))
    with pytest.raises(UnknownLine, match="no model line 'c'"):
        fed.port.line("c")

    # line b alone: a federation of b1 and b2 whose one line is named b
    alone = _fed(tmp_path / "b", Clock(), _cfg({"names": ["b"]}))
    solo = {n: _join(alone, n)[0] for n in ("b1", "b2")}
    alone.tick()
    _round(alone, {solo["b1"]: 10.0, solo["b2"]: 30.0})
    alone.tick()
    assert [v.id for v in alone.engine.state.versions] == [v.id for v in b.state.versions]
    assert torch.equal(alone.engine.state.params["a"], b.state.params["a"])

    fed.tick()  # both lines open their next round; line b gets one update, then a crash
    fed.port.upload(_upload(fed, pids["b1"], 5.0))
    heads = {n: ln.engine.version.id for n, ln in fed.lines.items()}
    del fed
    again = _fed(tmp_path / "two", clock, _cfg(TWO))
    assert {n: ln.engine.version.id for n, ln in again.lines.items()} == heads
    rb = again.lines["b"].engine.current
    assert rb is not None and set(rb.received) == {pids["b1"]}  # replayed into its line
    status = again.status()
    assert status["lines"]["b"]["open_round"]["received"] == 1
    assert status["lines"]["a"]["version"] == heads["a"]
    db = Database(again.db.url)
    with db.transaction() as s:
        lines = {v.id: v.line for v in s.query(Version)}
        rounds = sorted((r.line, r.number, r.status) for r in s.query(Round))
    db.close()
    assert {lines[heads["a"]], lines[heads["b"]]} == {"a", "b"}
    checks = recompute_versions(_cfg(TWO), again.db, again.blobs)  # every line's versions
    assert [c.status for c in checks] == ["ok", "ok"] and check_manifests(again.db) == []
    b_root = again.lines["b"].engine.state.versions[0].id
    again.rollback(b_root[:12])  # found in line b's lineage; line a untouched
    assert again.lines["b"].engine.version.rollback_of == b_root
    assert again.lines["a"].engine.version.id == heads["a"]
    assert rounds == [("a", 0, "closed"), ("a", 1, "open"), ("b", 0, "closed"), ("b", 1, "open")]
