"""The findings report: every claim is measured and reported with a verdict and a command."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from lwmm_lab.analysis.findings import CLAIMS, measure, measure_seeds, seeded_table
from lwmm_lab.cli import main
from lwmm_lab.errors import LwmmError
from lwmm_lab.zoo import ZooConfig, build_zoo

KEYS = {"number", "claim", "source", "paper", "results", "command"}


def test_findings_command_reports_every_claim(
    quick_zoo: Path, capsys, monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LWMM_DATA", str(tmp_path))
    assert main(["findings", "--zoo", str(quick_zoo), "--images", "4", "--json"]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert "findings: 100%" in err and "13/13" in err, "a bar over the claims, on stderr"
    assert [f["number"] for f in report] == sorted(CLAIMS) == list(range(1, 14))
    for f in report:
        assert set(f) == KEYS and f["command"].startswith("lwmm ")
        assert set(f["results"]) == set(CLAIMS[f["number"]].families)
        for r in f["results"].values():
            assert r["holds"] in ("yes", "partly", "no") and r["ours"] and r["why"]
    families = {f["number"]: set(f["results"]) for f in report}
    assert families[4] == {"strategies", "independent"}
    assert families[6] == families[7] == families[12] == families[13] == {"independent"}
    assert families[10] == {"strategies"}
    assert (
        main(["findings", "--zoo", str(quick_zoo), "--images", "4", "--only", "11", "--markdown"])
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| # | claim | paper | one source model | independent decoders |")
    assert lines[2].startswith("| 11 |")
    assert len(re.findall(r"\*\*(yes|partly|no)\*\*", lines[2])) == 2, "one verdict per family"
    assert "ensemble" in lines[2] and "lwmm findings --only 11" in lines[2]
    assert lines[4].startswith("11. one source model: **")


def test_findings_over_several_builds_give_a_spread_and_agreeing_verdicts(
    quick_zoo: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Two builds of the zoo (seeds 0 and 1), claims 9 and 13: each figure per build, its mean
    and spread, a verdict only where both builds agree, and how far another val set moves it."""
    monkeypatch.setenv("LWMM_DATA", str(tmp_path))
    seeded = tmp_path / "zoo-quick-seed1"
    build_zoo(seeded, replace(ZooConfig.quick_config(), seed=1), "cpu", log=lambda line: None)
    zoos = {0: quick_zoo, 1: seeded}
    results, facts = measure_seeds([0, 1], images=4, only=[9, 13], build=zoos.__getitem__)
    assert [f.number for f in results] == [9, 13] and facts["seeds"] == [0, 1]
    alone = measure(quick_zoo, images=4, only=9)[0].results  # one claim (a TypeError before)
    with pytest.raises(LwmmError, match=r"^no claim given \(the claims are 1\.\.13\)"):
        measure(quick_zoo, images=4, only=[])  # measured nothing without a word
    for family, spread in results[0].spreads.items():
        assert spread.name and len(spread.values) == len(spread.verdicts) == 2
        assert spread.values[0] == pytest.approx(alone[family].key[1]), "build 0 is the zoo's"
        agree = spread.verdicts[0] == spread.verdicts[1]
        assert spread.verdict == (spread.verdicts[0] if agree else "within noise")
        assert spread.eval_noise is not None and spread.eval_noise >= 0
    assert set(results[1].spreads) == {"independent"}
    table = seeded_table(results, facts)
    assert table.startswith("2 builds of the default zoo (seeds 0, 1), 4 real val images")
    assert "| 13 |" in table and "±" in table
    capsys.readouterr()
    assert main(["findings", "--seeds", "0", "0"]) == 1
    assert "distinct" in capsys.readouterr().err
    assert main(["findings", "--seeds", "1", "--zoo", str(quick_zoo)]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
