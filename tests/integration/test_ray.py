"""Ray for simulations that outgrow one process: the participants on Ray actors give the
same versions as in process for the same seed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_config
from zenfed.errors import ZenfedError
from zenfed.sim import run_simulation

pytestmark = pytest.mark.integration

BASE = {
    "data": {"partition": "iid", "num_participants": 5},
    "train": {"lr": 1e-2, "local_steps": 2, "batch_size": 4},
    "run": {"rounds": 2, "seed": 3},
    "compress": {"downlink": [{"codec": "quantize", "bits": 8}]},
}


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Torch on one thread in this process too: the actors run one each (Ray's default),
    and a float sum's order depends on the threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
def test_ray_actors_give_the_same_versions_as_in_process(tmp_path: Path) -> None:
    here = run_simulation(tiny_config(**BASE), tmp_path / "process")
    ray_cfg = tiny_config(**{**BASE, "run": {**BASE["run"], "backend": "ray"}}, ray={"actors": 2})
    there = run_simulation(ray_cfg, tmp_path / "ray")
    assert there["version"] == here["version"]  # the same tensors, bit for bit
    for key in ("fed_loss", "upload_bytes", "download_bytes", "eval_download_bytes"):
        assert there[key] == here[key], key


def test_a_ray_address_that_does_not_answer_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tiny_config(
        **{**BASE, "run": {**BASE["run"], "backend": "ray"}}, ray={"address": "127.0.0.1:1"}
    )
    with pytest.raises(ZenfedError, match="does not answer"):
        run_simulation(cfg, tmp_path / "ray")


def test_simulate_with_a_ray_address_that_does_not_answer_exits_with_the_reason(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    from tests.integration.test_cli import TINY_TOML

    cfg = tmp_path / "fed.toml"
    cfg.write_text(TINY_TOML)
    out = subprocess.run(
        [
            *(sys.executable, "-m", "zenfed.cli", "simulate", "--config", str(cfg), "--quiet"),
            *("--out", str(tmp_path / "run"), "--ray-address", "127.0.0.1:1"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0
    assert "Ray at '127.0.0.1:1' does not answer" in out.stdout + out.stderr
