"""One harness for every benchmark: rows that carry their own provenance, a scratch folder
by default, publishing only from a clean tree, and headlines declared before the runs.

    ap = argparse.ArgumentParser(); harness.add_arguments(ap); args = ap.parse_args()
    results = harness.open_results("secagg", key=("kind", "n", "d", "dropout", "seed"), args=args)
    with results.timed() as t:                      # wall time of this row
        row = measure(...)
    results.record({"kind": "grid", "n": 10, ..., **row}, t)   # provenance added, merged by key
    results.save()                                  # scratch (default) or benchmarks/results/

Each row records the commit it was measured at and whether the tree was clean, the date,
the CPU (model, the vector kernels torch dispatches to), the cores, the versions of the
packages that decide the numbers, the command line and its own wall time. A run writes to
``benchmarks/scratch/`` (``ZENFED_BENCH_SCRATCH`` moves it) unless given ``--publish``,
which refuses a tree with uncommitted changes before anything runs and merges the new
rows into ``benchmarks/results/<name>.json`` by their key: a row with the same key is
replaced, every other row is kept. The file lists the commits its rows come from.

A headline (``Headline``) is declared in the benchmark's code, before any run: which rows,
which metric, which seeds, and the baseline it is compared with. Fewer than ``MIN_SEEDS``
seeds make an exploration, never a headline; a comparison is the paired per-seed
difference with its mean, standard deviation and 95 % interval, and ``within(pct)`` holds
only when the whole interval does.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = ROOT / "benchmarks" / "results"
MIN_SEEDS = 3
# What a run's numbers depend on besides the code (constraints.txt pins them all).
PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "tokenizers",
    "safetensors",
    "numpy",
    "cryptography",
    "dp-accounting",
    "ray",
)
# Environment variables that choose which vector kernels torch, MKL and oneDNN run.
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")


class HarnessError(Exception):
    """A benchmark run that cannot go on (a dirty tree to publish from, a bad file)."""


def scratch_dir() -> Path:
    """Where runs write unless published (``ZENFED_BENCH_SCRATCH``, or
    ``benchmarks/scratch/``, which git ignores)."""
    return Path(os.environ.get("ZENFED_BENCH_SCRATCH", ROOT / "benchmarks" / "scratch"))


def git_state(root: Path = ROOT) -> tuple[str, bool]:
    """(HEAD's commit, whether tracked files differ from it); ("", True) outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "", True
    return head, bool(changed)


def machine() -> dict[str, Any]:
    """The CPU, the vector kernels torch dispatches to, the cores, the package versions:
    the same code, config and seed round differently with AVX-512 and AVX2 kernels."""
    capability = ""
    if "torch" in sys.modules:  # (not imported by a benchmark that needs no torch)
        capability = sys.modules["torch"].backends.cpu.get_cpu_capability()
    return {
        "cpu": cpu_model(),
        "kernels": capability,
        **{k.lower(): os.environ[k] for k in KERNEL_ENV if k in os.environ},
        "cores": os.cpu_count() or 0,
        "python": platform.python_version(),
        "packages": versions(PACKAGES),
    }


def cpu_model() -> str:
    """The processor's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def versions(names: Sequence[str]) -> dict[str, str]:
    """The installed versions of the packages ``names`` (those installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The harness's options on a benchmark's command line."""
    ap.add_argument(
        "--publish",
        action="store_true",
        help="write into benchmarks/results/ (refused with uncommitted changes); "
        "default: the scratch folder",
    )
    ap.add_argument("--out", type=Path, default=None, help="the folder to write to instead")


@dataclass
class Timer:
    """A row's wall time (``ResultFile.timed``)."""

    seconds: float = 0.0


@dataclass
class ResultFile:
    """One benchmark's rows, in the scratch folder or the published one (see the module)."""

    name: str
    key: tuple[str, ...]
    folder: Path
    command: str
    publish: bool = False
    commit: str = ""
    dirty: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # file-level facts (the headline rule)
    rows: list[dict[str, Any]] = field(default_factory=list)
    root: Path = ROOT  # the repository whose commit the rows name

    @property
    def path(self) -> Path:
        """The JSON file."""
        return self.folder / f"{self.name}.json"

    def load(self) -> None:
        """The rows already in the file (none if there is none)."""
        if not self.path.is_file():
            return
        data = json.loads(self.path.read_text())
        if data.get("format") != "zenfed-bench/1" or data.get("key") != list(self.key):
            raise HarnessError(
                f"{self.path} is not a harness file of this benchmark (key {list(self.key)}): "
                "move it aside, or run the benchmark's old form"
            )
        self.rows = list(data["rows"])

    @contextmanager
    def timed(self) -> Iterator[Timer]:
        """Time the block: the row's ``wall_s``."""
        t, t0 = Timer(), time.perf_counter()
        try:
            yield t
        finally:
            t.seconds = time.perf_counter() - t0

    def record(self, row: Mapping[str, Any], timer: Timer | None = None) -> dict[str, Any]:
        """``row`` with its provenance, merged by key (a row with the same key replaced)."""
        missing = [k for k in self.key if k not in row]
        if missing:
            raise HarnessError(f"a {self.name} row lacks its key field '{missing[0]}'")
        full = {
            **row,
            "provenance": {
                "commit": self.commit,
                "clean": not self.dirty,
                "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "command": self.command,
                "wall_s": round(timer.seconds, 3) if timer else None,
                **machine(),
            },
        }
        self.rows = merge_rows(self.rows, [full], self.key)
        return full

    def save(self) -> Path:
        """Write the file (atomically): format, key, file facts, the commits, the rows. A
        published file is written only if the tree is still clean at the same commit."""
        if self.publish and git_state(self.root) != (self.commit, False):
            raise HarnessError(
                "the tree changed during the run (another commit, or uncommitted changes): "
                "nothing was published; the rows are lost, run again from a clean tree"
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        commits = sorted({r["provenance"]["commit"] for r in self.rows if "provenance" in r})
        data = {
            "format": "zenfed-bench/1",
            "benchmark": self.name,
            "key": list(self.key),
            **self.extra,
            "commits": commits,
            "rows": self.rows,
        }
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
        tmp.replace(self.path)
        return self.path


def merge_rows(
    old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]], key: Sequence[str]
) -> list[dict[str, Any]]:
    """``old`` with each row of ``new`` in place of the old row of the same key (appended
    when there was none): no other row is dropped, the order of first appearance kept."""
    out = [dict(r) for r in old]
    where = {_key(r, key): i for i, r in enumerate(out)}
    for r in new:
        k = _key(r, key)
        if k in where:
            out[where[k]] = dict(r)
        else:
            where[k] = len(out)
            out.append(dict(r))
    return out


def _key(row: Mapping[str, Any], key: Sequence[str]) -> str:
    return json.dumps([row.get(k) for k in key])


def open_results(
    name: str,
    key: Sequence[str],
    args: argparse.Namespace,
    extra: Mapping[str, Any] | None = None,
    root: Path = ROOT,
) -> ResultFile:
    """The result file a run of benchmark ``name`` writes, its earlier rows loaded.
    ``--publish`` from a tree with uncommitted changes is refused here, before any run."""
    commit, dirty = git_state(root)
    publish = bool(getattr(args, "publish", False))
    if publish and dirty:
        raise HarnessError(
            "--publish needs a clean tree: commit (or stash) the changes, then run again; "
            "without --publish the run writes to the scratch folder"
        )
    folder = getattr(args, "out", None) or (PUBLISHED if publish else scratch_dir())
    command = " ".join(["python -m", f"benchmarks.{name}", *sys.argv[1:]])
    rf = ResultFile(name, tuple(key), Path(folder), command, publish, commit, dirty, root=root)
    rf.extra = dict(extra or {})
    rf.load()
    return rf


# ---- headlines, declared before the runs ---------------------------------------------------


@dataclass(frozen=True)
class Stats:
    """A mean over seeds with its spread: standard deviation and a 95 % interval (t)."""

    n: int
    mean: float
    std: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        """The statistics of ``values`` (one value: no spread, an infinite interval)."""
        n = len(values)
        mean = sum(values) / n if n else math.nan
        if n < 2:
            return cls(n, mean, math.nan, -math.inf, math.inf)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
        half = _t95(n - 1) * std / math.sqrt(n)
        return cls(n, mean, std, mean - half, mean + half)


def _t95(df: int) -> float:
    """Student's t at 97.5 % for ``df`` degrees of freedom (two-sided 95 %)."""
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365}
    table |= {8: 2.306, 9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}
    if df in table:
        return table[df]
    return table[max(k for k in table if k <= df)] if df < 30 else 1.96


@dataclass(frozen=True)
class Headline:
    """A benchmark's headline, fixed in its code before the runs: the ``metric`` of the
    rows matching ``where`` over ``seeds``, and (optionally) the paired per-seed
    difference against the rows matching ``baseline``."""

    title: str
    metric: str
    where: Mapping[str, Any]
    seeds: tuple[int, ...]
    baseline: Mapping[str, Any] | None = None
    unit: str = ""

    def describe(self) -> dict[str, Any]:
        """The rule as data (what a result file records)."""
        return {
            "title": self.title,
            "metric": self.metric,
            "where": dict(self.where),
            "seeds": list(self.seeds),
            "baseline": dict(self.baseline) if self.baseline is not None else None,
            "unit": self.unit,
        }

    def evaluate(self, rows: Sequence[Mapping[str, Any]]) -> HeadlineResult:
        """The headline's figures from ``rows`` (an exploration with fewer than
        ``MIN_SEEDS`` of its seeds measured)."""
        ours = _by_seed(rows, self.where, self.metric, self.seeds)
        stats = Stats.of(list(ours.values()))
        diff = None
        if self.baseline is not None:
            theirs = _by_seed(rows, self.baseline, self.metric, self.seeds)
            paired = [ours[s] - theirs[s] for s in ours if s in theirs]
            diff = Stats.of(paired)
        return HeadlineResult(self, stats, diff, len(ours) >= MIN_SEEDS)


@dataclass(frozen=True)
class HeadlineResult:
    """What a headline's rows say, and whether it may be quoted as one."""

    rule: Headline
    stats: Stats
    difference: Stats | None  # ours minus the baseline's, paired by seed
    quotable: bool

    def within(self, pct: float, reference: float) -> bool:
        """Whether the difference is within ``pct`` % of ``reference`` on both ends of its
        95 % interval (and the headline has its seeds)."""
        d = self.difference
        if d is None or not self.quotable or d.n < MIN_SEEDS:
            return False
        bound = abs(reference) * pct / 100
        return -bound <= d.low and d.high <= bound


def _by_seed(
    rows: Sequence[Mapping[str, Any]], where: Mapping[str, Any], metric: str, seeds: Sequence[int]
) -> dict[int, float]:
    out: dict[int, float] = {}
    for r in rows:
        chosen = all(r.get(k) == v for k, v in where.items()) and r.get("seed") in seeds
        if chosen and r.get(metric) is not None:
            out[int(r["seed"])] = float(r[metric])
    return out
