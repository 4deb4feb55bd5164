"""The findings report: every claim is measured and reported with a verdict and a command."""

from __future__ import annotations

import json
from pathlib import Path

from lwmm_lab.analysis.findings import CLAIMS
from lwmm_lab.cli import main

KEYS = {"number", "claim", "source", "paper", "ours", "holds", "explanation", "command", "details"}


def test_findings_command_reports_every_claim(
    quick_zoo: Path, capsys, monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LWMM_DATA", str(tmp_path))
    assert main(["findings", "--zoo", str(quick_zoo), "--images", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [f["number"] for f in report] == sorted(CLAIMS) == list(range(1, 12))
    for f in report:
        assert set(f) == KEYS
        assert f["holds"] in ("yes", "partly", "no")
        assert f["ours"] and f["explanation"] and f["command"].startswith("lwmm ")
    assert (
        main(["findings", "--zoo", str(quick_zoo), "--images", "4", "--only", "11", "--markdown"])
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[2].startswith("| 11 |")
    assert "ensemble" in lines[2] and "lwmm findings --only 11" in lines[2]
