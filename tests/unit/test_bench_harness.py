"""The benchmark harness: provenance on every row, scratch by default, publishing only
from a clean tree, rows merged by key, headlines that need their seeds."""

import argparse
import json
import subprocess
from pathlib import Path

import pytest
from benchmarks import harness
from benchmarks.harness import HarnessError, Headline, merge_rows, open_results


def _repo(tmp: Path) -> Path:
    root = tmp / "repo"
    root.mkdir()
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git[:3], "init", "-q"], check=True)
    (root / "a.txt").write_text("1")
    subprocess.run([*git, "add", "a.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    return root


def _args(**kw: object) -> argparse.Namespace:
    return argparse.Namespace(publish=False, out=None, **kw)


def test_merging_replaces_rows_of_the_same_key_and_keeps_every_other() -> None:
    old = [{"n": 1, "seed": 0, "v": 1.0}, {"n": 2, "seed": 0, "v": 2.0}]
    new = [{"n": 2, "seed": 0, "v": 9.0}, {"n": 3, "seed": 0, "v": 3.0}]
    got = merge_rows(old, new, ("n", "seed"))
    assert [(r["n"], r["v"]) for r in got] == [(1, 1.0), (2, 9.0), (3, 3.0)]


def test_a_run_writes_to_scratch_with_each_row_s_provenance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _repo(tmp_path)
    monkeypatch.setenv("ZENFED_BENCH_SCRATCH", str(tmp_path / "scratch"))
    rf = open_results("demo", ("n", "seed"), _args(), root=root)
    with rf.timed() as t:
        pass
    rf.record({"n": 1, "seed": 0, "v": 1.5}, t)
    path = rf.save()
    assert path == tmp_path / "scratch" / "demo.json"
    data = json.loads(path.read_text())
    head = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    prov = data["rows"][0]["provenance"]
    assert prov["commit"] == head.stdout.strip() and prov["clean"] is True
    assert {"date", "cpu", "cores", "packages", "command", "wall_s"} <= set(prov)
    assert data["commits"] == [head.stdout.strip()]
    again = open_results("demo", ("n", "seed"), _args(), root=root)  # earlier rows kept
    again.record({"n": 2, "seed": 0, "v": 2.5})
    again.save()
    assert [r["n"] for r in json.loads(path.read_text())["rows"]] == [1, 2]
    with pytest.raises(HarnessError, match="lacks its key field 'seed'"):
        again.record({"n": 3})


def test_publishing_is_refused_from_a_dirty_tree_and_when_the_tree_changes(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    out = tmp_path / "published"
    (root / "a.txt").write_text("2")  # an uncommitted change
    with pytest.raises(HarnessError, match="needs a clean tree"):
        open_results("demo", ("seed",), argparse.Namespace(publish=True, out=out), root=root)
    (root / "a.txt").write_text("1")
    rf = open_results("demo", ("seed",), argparse.Namespace(publish=True, out=out), root=root)
    rf.record({"seed": 0, "v": 1.0})
    (root / "a.txt").write_text("3")  # edited while the benchmark ran
    with pytest.raises(HarnessError, match="the tree changed during the run"):
        rf.save()
    assert not (out / "demo.json").exists()
    (root / "a.txt").write_text("1")
    assert json.loads(rf.save().read_text())["rows"][0]["provenance"]["clean"] is True


def test_a_headline_needs_three_of_its_seeds_and_compares_paired_by_seed() -> None:
    rule = Headline("loss", "loss", {"arm": "fed"}, (3, 4, 5), baseline={"arm": "central"})
    rows = [{"arm": "fed", "seed": s, "loss": 1.0 + 0.01 * s} for s in (0, 3, 4)]
    rows += [{"arm": "central", "seed": s, "loss": 1.0} for s in (3, 4, 5)]
    early = rule.evaluate(rows)
    assert not early.quotable and early.stats.n == 2  # seed 0 is a pilot seed: not counted
    assert not early.within(10.0, 1.0)
    rows.append({"arm": "fed", "seed": 5, "loss": 1.05})
    done = rule.evaluate(rows)
    assert done.quotable and done.difference is not None
    assert done.difference.mean == pytest.approx((0.03 + 0.04 + 0.05) / 3)
    assert done.within(10.0, 1.0) and not done.within(4.0, 1.0)


def test_the_scratch_folder_is_ignored_by_git() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(harness.ROOT / "benchmarks" / "scratch" / "x.json")],
        cwd=harness.ROOT,
    )
    assert ignored.returncode == 0
