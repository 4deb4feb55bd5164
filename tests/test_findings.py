"""The findings report: every claim is measured and reported with a verdict and a command."""

from __future__ import annotations

import json
import re
from pathlib import Path

from lwmm_lab.analysis.findings import CLAIMS
from lwmm_lab.cli import main

KEYS = {"number", "claim", "source", "paper", "results", "command"}


def test_findings_command_reports_every_claim(
    quick_zoo: Path, capsys, monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LWMM_DATA", str(tmp_path))
    assert main(["findings", "--zoo", str(quick_zoo), "--images", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
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
