"""The CLI as a user runs it: real subprocesses, a real SIGKILL, real exports."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from zenfed.config import ModelConfig
from zenfed.model import load_base_model
from zenfed.sim.runner import load_run

pytestmark = pytest.mark.integration

TINY_TOML = """
[model]
name = "tiny-llama"
[data]
corpus = "chatterbot"
categories = ["ai", "emotion", "literature"]
max_seq_len = 48
[train]
lr = 1e-2
local_steps = 2
batch_size = 4
keep_optimizer_state = true
[server]
optimizer = "nesterov"
lr = 0.7
[run]
rounds = 8
eval_every = 4
"""


def _zenfed(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zenfed", *args], capture_output=True, text=True, timeout=600, **kw
    )  # type: ignore[call-overload]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    p = tmp_path / "fed.toml"
    p.write_text(TINY_TOML)
    return p


def test_resume_after_sigkill_matches_an_uninterrupted_run(config: Path, tmp_path: Path) -> None:
    whole = _zenfed("simulate", "--config", str(config), "--out", str(tmp_path / "a"), "--quiet")
    assert whole.returncode == 0, whole.stderr
    run_b = tmp_path / "b"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zenfed",
            "simulate",
            "--config",
            str(config),
            "--out",
            str(run_b),
            "--quiet",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = run_b / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:  # rounds 0..2
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at, _, _ = load_run(run_b)
    assert 1 <= killed_at.round < 8  # really stopped mid-run
    resumed = _zenfed(
        "simulate", "--config", str(config), "--out", str(run_b), "--resume", "--quiet"
    )
    assert resumed.returncode == 0, resumed.stderr
    a, _, _ = load_run(tmp_path / "a")
    b, _, hist = load_run(run_b)
    assert [h["round"] for h in hist] == list(range(9))
    for k in a.params:
        torch.testing.assert_close(b.params[k], a.params[k], rtol=0, atol=0)
    sa = json.loads((tmp_path / "a" / "summary.json").read_text())
    sb = json.loads((run_b / "summary.json").read_text())
    assert sb["fed_loss"] == pytest.approx(sa["fed_loss"])
    assert sa["fed_loss"] < sa["initial_loss"]


def test_export_writes_a_loadable_peft_adapter(config: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert (
        _zenfed(
            "simulate",
            "--config",
            str(config),
            "--out",
            str(run),
            "--quiet",
            "--set",
            "run.rounds=1",
        ).returncode
        == 0
    )
    out = _zenfed("export", "--run", str(run), "--out", str(tmp_path / "exp"))
    assert out.returncode == 0, out.stderr
    base, _ = load_base_model(ModelConfig(name="tiny-llama"))
    model = PeftModel.from_pretrained(base, tmp_path / "exp")
    state, _, _ = load_run(run)
    loaded = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    assert any(float(p.abs().sum()) > 0 for p in loaded.values())  # trained, not the init
    merged = _zenfed("export", "--run", str(run), "--out", str(tmp_path / "m"), "--merged")
    assert merged.returncode == 0 and (tmp_path / "m" / "config.json").is_file()
    assert state.round == 1


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[train]\nlrr = 1e-3\n", "unknown key 'train.lrr'; did you mean 'lr'?"),
        ('[train]\nlr = "fast"\n', "key 'train.lr'"),
        ('[model]\nname = "gpt-17"\n', "unknown model 'gpt-17'"),
        ('[data]\ncorpus = "chatterbot"\ncategories = ["cooking"]\n', "no category 'cooking'"),
        (
            '[data]\ncorpus = "chatterbot"\ncategories = ["ai"]\nmax_seq_len = 20\n',
            "participant 'ai' has 0 usable examples",
        ),
        (
            '[data]\ncorpus = "chatterbot"\ncategories = ["ai"]\n'
            '[[compress.pipeline]]\ncodec = "topk"\nk = 100000\n',
            "topk k=100000 exceeds a tensor of 512 values",
        ),
        ('[[compress.pipeline]]\ncodec = "quantize"\nbits = 3\n', "bits"),
        ('[[compress.pipeline]]\ncodec = "gzip"\n', "unknown codec 'gzip'"),
    ],
)
def test_bad_input_gets_one_line_and_leaves_nothing(
    tmp_path: Path, toml: str, message: str
) -> None:
    cfg = tmp_path / "bad.toml"
    base = "" if toml.startswith("[model]") else '[model]\nname = "tiny-llama"\n'
    cfg.write_text(base + toml)
    out = tmp_path / "run"
    res = _zenfed("simulate", "--config", str(cfg), "--out", str(out), "--quiet")
    assert res.returncode == 2
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists()  # nothing half-written


def test_missing_data_file_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "f.toml"
    cfg.write_text(
        '[model]\nname = "tiny-llama"\n[data]\n'
        f'[[data.sources]]\nname = "clinic"\npath = "{tmp_path}/nope.jsonl"\n'
    )
    res = _zenfed("simulate", "--config", str(cfg), "--out", str(tmp_path / "r"), "--quiet")
    assert res.returncode == 2 and "nope.jsonl' (source 'clinic') does not exist" in res.stderr


def test_two_runs_of_one_config_and_seed_commit_the_same_version(tmp_path: Path) -> None:
    """Reproducibility on one machine: two processes, with different string-hash seeds
    (set and dict orders of names), Poisson sampling and seeded lossy codecs up and down,
    end at the same version id (the hash of every tensor and of the lineage)."""
    p = tmp_path / "fed.toml"
    p.write_text(
        TINY_TOML.replace("[run]", '[sampling]\nmethod = "poisson"\nfraction = 0.6\n[run]')
        + '[compress]\npipeline = [{ codec = "randk", fraction = 0.5 }, { codec = "sign" }]\n'
        + 'downlink = [{ codec = "topk", fraction = 0.3 }, { codec = "quantize", bits = 4 }]\n'
    )
    versions = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = tmp_path / f"run{hash_seed}"
        done = _zenfed("simulate", "--config", str(p), "--out", str(out), "--quiet", env=env)
        assert done.returncode == 0, done.stderr
        versions.append(json.loads((out / "summary.json").read_text())["version"])
    assert versions[0] == versions[1]


def test_plan_prints_the_epsilon_and_warns_when_the_noise_swamps_the_update(
    tmp_path: Path,
) -> None:
    p = tmp_path / "private.toml"
    p.write_text(
        TINY_TOML.replace("[run]", '[sampling]\nmethod = "poisson"\nfraction = 0.5\n[run]')
        + "[privacy]\nclip_norm = 1.0\ntarget_epsilon = 8.0\n"
    )
    done = _zenfed("plan", "--config", str(p), "--holders", "10")
    assert done.returncode == 0, done.stderr
    out = " ".join(done.stdout.split())
    assert "8.000 at delta 1e-06 (8 rounds)" in out and "swamp the update" in out
    assert "a round's update reaches (norm) / C" in out and "(lr x local steps x sqrt(d))" in out
    many = _zenfed("plan", "--config", str(p), "--holders", "10000000")
    assert many.returncode == 0 and "noise within the bound" in many.stdout
    none = _zenfed("plan", "--config", str(p), "--holders", "0")
    assert none.returncode == 2 and "0 holders" in none.stderr
    plain = tmp_path / "plain.toml"
    plain.write_text(TINY_TOML)
    refused = _zenfed("plan", "--config", str(plain))
    assert refused.returncode == 2 and "no participant-level DP" in refused.stderr


def test_plan_of_a_holders_dp_sgd_gives_its_epsilon_and_the_batch_it_needs(
    tmp_path: Path,
) -> None:
    p = tmp_path / "record.toml"
    p.write_text(TINY_TOML + "[privacy]\nrecord_clip_norm = 1.0\nrecord_target_epsilon = 8.0\n")
    few = _zenfed("plan", "--config", str(p), "--examples", "50")
    assert few.returncode == 0, few.stderr
    out = " ".join(few.stdout.split())
    assert "8.000 at delta 1e-06" in out and "swamp the gradient" in out
    assert "no participant-level" not in out  # only the record-level plan was asked for
    many = _zenfed("plan", "--config", str(p), "--examples", "10000000")
    assert many.returncode == 0, many.stderr
    found = re.search(r"expected batch for the bound\s*│\s*([\d,]+)", many.stdout)
    assert found is not None, many.stdout
    batch = found.group(1).replace(",", "")
    enough = _zenfed(
        "plan", "--config", str(p), "--examples", "10000000", "--set", f"train.batch_size={batch}"
    )
    assert "noise within the bound" in enough.stdout, enough.stdout
    refused = _zenfed("plan", "--config", str(p), "--examples", "0")
    assert refused.returncode == 2 and "0 records" in refused.stderr
