from pathlib import Path

import pytest
from pydantic import ValidationError

from zenfed.config import load_config, parse_config
from zenfed.errors import ZenfedError


def test_defaults_parse_and_are_frozen() -> None:
    cfg = parse_config({})
    assert cfg.train.local_steps == 5
    with pytest.raises(ValidationError):
        cfg.train.lr = 1.0  # type: ignore[misc]


def test_unknown_key_names_it_and_suggests_the_close_spelling() -> None:
    with pytest.raises(ZenfedError, match=r"unknown key 'train.lrr'.*did you mean 'lr'"):
        parse_config({"train": {"lrr": 1e-3}})


def test_unknown_section_is_rejected() -> None:
    with pytest.raises(ZenfedError, match="unknown key 'trian'.*did you mean 'train'"):
        parse_config({"trian": {}})


def test_wrong_type_names_the_key() -> None:
    with pytest.raises(ZenfedError, match="key 'train.lr'"):
        parse_config({"train": {"lr": "fast"}})
    with pytest.raises(ZenfedError, match="key 'run.rounds'"):
        parse_config({"run": {"rounds": 2.5}})


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"lr": float("nan")}, "train.lr and train.batch_size must be positive"),
        ({"lr": 0.0}, "train.lr and train.batch_size must be positive"),
        ({"local_steps": 0}, "train.local_steps must be at least 1"),
        ({"local_epochs": 0.0}, "train.local_epochs must be positive"),
        ({"local_epochs": float("nan")}, "train.local_epochs must be positive"),
        # (an infinite count passed and overflowed math.ceil in the first round's training)
        ({"local_epochs": float("inf")}, "train.local_epochs must be positive and finite"),
    ],
)
def test_a_round_of_training_needs_a_real_step(train: dict[str, float], message: str) -> None:
    # (the privacy planner divides by lr x local steps, the update's reach)
    with pytest.raises(ZenfedError, match=message):
        parse_config({"train": train})


def test_epochs_replace_the_default_steps_but_not_explicit_steps() -> None:
    assert parse_config({"train": {"local_epochs": 1.0}}).train.local_steps is None
    with pytest.raises(ZenfedError, match="exactly one"):
        parse_config({"train": {"local_epochs": 1.0, "local_steps": 3}})


def test_load_config_reads_toml_and_applies_overrides(tmp_path: Path) -> None:
    f = tmp_path / "fed.toml"
    f.write_text("[train]\nlr = 3e-4\n[run]\nrounds = 7\n")
    cfg = load_config(f, {"train.batch_size": 2})
    assert (cfg.train.lr, cfg.run.rounds, cfg.train.batch_size) == (3e-4, 7, 2)


def test_missing_and_malformed_config_files(tmp_path: Path) -> None:
    with pytest.raises(ZenfedError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nlr = 1")
    with pytest.raises(ZenfedError, match="not valid TOML"):
        load_config(bad)


def test_demo_config_is_valid() -> None:
    cfg = load_config(Path(__file__).parents[2] / "examples" / "demo.toml")
    assert cfg.model.name == "smollm2-135m-instruct"
    assert len(cfg.data.categories) == 8


def test_sources_alone_replace_the_builtin_corpus() -> None:
    cfg = parse_config({"data": {"sources": [{"name": "a", "path": "a.jsonl"}]}})
    assert cfg.data.corpus is None
    assert parse_config({}).data.corpus == "chatterbot"


def test_every_example_config_is_valid() -> None:
    from pathlib import Path

    from zenfed.config import load_config

    examples = sorted(Path(__file__).resolve().parents[2].joinpath("examples").glob("*.toml"))
    assert len(examples) >= 4
    for path in examples:
        load_config(path)  # raises on any unknown key or bad value


@pytest.mark.parametrize(
    "record",
    [
        {"record_clip_norm": 1.0},  # no noise
        {"record_noise_multiplier": 1.0},  # no bound
        {"record_target_epsilon": 3.0},  # no bound
        {"record_clip_norm": 1.0, "record_noise_multiplier": 1.0, "record_target_epsilon": 3.0},
    ],
)
def test_record_level_dp_needs_a_bound_and_one_way_to_set_its_noise(
    record: dict[str, float],
) -> None:
    with pytest.raises(ZenfedError, match="record_clip_norm and one of"):
        parse_config({"privacy": record})


def test_record_level_dp_values_must_be_positive() -> None:
    for key in ("record_noise_multiplier", "record_target_epsilon"):
        with pytest.raises(ZenfedError, match="must be > 0"):
            parse_config({"privacy": {"record_clip_norm": 1.0, key: 0.0}})
    cfg = parse_config({"privacy": {"record_clip_norm": 1.0, "record_target_epsilon": 3.0}})
    assert cfg.privacy.record_target_epsilon == 3.0 and not cfg.privacy.enabled


def test_sampling_is_a_table_tagged_by_its_matcher() -> None:
    from zenfed.config import EpochsSampling, PoissonSampling, UniformSampling

    assert parse_config({}).sampling == UniformSampling()  # no method: uniform
    fixed = parse_config({"sampling": {"method": "fixed", "fraction": 0.5}})  # the old name
    assert fixed.sampling == UniformSampling(fraction=0.5)
    cfg = parse_config({"sampling": {"method": "poisson", "fraction": 0.1}})
    assert isinstance(cfg.sampling, PoissonSampling) and cfg.sampling.sampling_rate == 0.1
    epochs = parse_config({"sampling": {"method": "epochs", "fraction": 0.3}}).sampling
    assert isinstance(epochs, EpochsSampling) and epochs.pass_rounds == 4
    assert (epochs.sampling_rate, epochs.expected_size(40)) == (1.0, 10.0)
    assert UniformSampling(fraction=0.25, min_participants=3).expected_size(8) == 3.0
    with pytest.raises(ZenfedError, match=r"unknown method 'lottery' in 'sampling'.*uniform"):
        parse_config({"sampling": {"method": "lottery"}})
    with pytest.raises(ZenfedError, match=r"unknown key 'sampling.poisson.fractoin'.*fraction"):
        parse_config({"sampling": {"method": "poisson", "fractoin": 0.1}})
    with pytest.raises(ZenfedError, match=r"sampling.fraction must be in \(0, 1\]"):
        parse_config({"sampling": {"method": "epochs", "fraction": 0}})
