"""The benchmark docs are what the results generate, and a section renders its
headlines honestly (an exploration stays one; a target is met only as far as the
interval says)."""

import json
from pathlib import Path

from benchmarks import report, secagg
from benchmarks.harness import PUBLISHED


def test_the_committed_docs_are_what_the_results_generate() -> None:
    assert report.DOC.read_text() == report.benchmarks_doc(), (
        "docs/benchmarks.md differs: run python -m benchmarks.report"
    )
    readme = report.README.read_text()
    assert readme == report.readme_text(readme), (
        "README's table differs: python -m benchmarks.report"
    )


def _rows(seeds: tuple[int, ...], client_ms: dict[int, float]) -> list[dict[str, object]]:
    prov = {"commit": "a" * 40, "clean": True, "date": "2026-12-08T00:00:00Z", "cpu": "cpu",
            "kernels": "AVX2", "cores": 2, "packages": {"torch": "2"}, "wall_s": 30.0}  # fmt: skip
    return [
        {
            **secagg.POINT,
            "seed": s,
            "client_ms": client_ms[s],
            "plaintext_client_ms": 1.0,
            "server_s": 0.5,
            "plaintext_server_s": 0.1,
            "upload_expansion": 1.0005,
            "provenance": prov,
        }
        for s in seeds
    ]


def test_a_section_quotes_a_headline_only_with_its_seeds(tmp_path: Path) -> None:
    data = {"benchmark": "secagg", "rows": _rows((0, 1), {0: 50.0, 1: 60.0})}
    text = secagg.report(data)
    assert "participant's time per round: exploration only (2 of the 3 seeds" in text
    data["rows"] = _rows((0, 1, 2), {0: 50.0, 1: 60.0, 2: 98.0})
    text = secagg.report(data)
    assert "**participant's time per round: 69.3 ms**" in text
    assert "met by the mean, not by the whole interval" in text  # 95 % reaches above 100
    assert "| 100 | 1e6 | 10 % | 3 | 69.3 ms |" in text
    (tmp_path / "secagg.json").write_text(json.dumps({"format": "zenfed-bench/1", **data}))
    table = report.headline_table(tmp_path)
    assert "| secagg | participant's time per round | 69.3 ms (" in table
    assert tmp_path != PUBLISHED
