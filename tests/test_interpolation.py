"""The straight line between two models: its endpoints, its midpoint, its barrier, its command."""

from __future__ import annotations

import json
from pathlib import Path

import plotly.graph_objects as go
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lwmm_lab import Pool, merged_model
from lwmm_lab.analysis.adabn import reestimate_bn, train_images
from lwmm_lab.analysis.evaluation import evaluate, val_set
from lwmm_lab.analysis.interpolation import LinearPath, linear_path
from lwmm_lab.cli import main
from lwmm_lab.engine.model import load_model
from lwmm_lab.errors import LwmmError
from lwmm_lab.lab.figures import linear_path_figure
from lwmm_lab.zoo import load_manifest
from lwmm_lab.zoo.manifest import family_run, final, scenario_checkpoints

SIZE = (64, 128)


@pytest.fixture(scope="module")
def independent_pair(quick_zoo: Path) -> list[str]:
    manifest = load_manifest(quick_zoo)
    return [final(manifest, family_run("independent", s)) for s in ("advent", "minent")]


def test_a_path_runs_from_one_model_through_their_average_to_the_other(
    independent_pair: list[str],
) -> None:
    a, b = independent_pair
    path = linear_path(a, b, steps=3, domains=("real", "synthetic"), images=4, resolution=SIZE)
    assert path.t == (0.0, 0.5, 1.0)
    for domain in ("real", "synthetic"):
        data = val_set(domain, 4, SIZE)
        alone = [evaluate(load_model(p, "cpu"), data, domain).miou for p in (a, b)]
        average = merged_model(Pool([a, b], device="cpu"), method="isotropic")
        middle = evaluate(average, data, domain).miou
        assert path.scores(domain) == pytest.approx((alone[0], middle, alone[1]), abs=1e-9)
        chord = (alone[0] + alone[1]) / 2
        assert path.barrier(domain) == pytest.approx(max(0.0, chord - middle))
    assert path.to_json()["lowest"]["real"]["miou"] == min(path.scores("real"))
    with pytest.raises(LwmmError, match=r"^domain 'foggy' was not scored on this path"):
        path.barrier("foggy")


def test_aligning_b_keeps_the_endpoints_and_a_model_with_itself_is_flat(
    independent_pair: list[str],
) -> None:
    a, b = independent_pair
    plain = linear_path(a, b, steps=2, images=4, resolution=SIZE)
    aligned = linear_path(a, b, steps=2, images=4, resolution=SIZE, align=True)
    assert aligned.aligned and not plain.aligned
    # A permutation of b's hidden channels computes what b computes.
    assert aligned.scores() == pytest.approx(plain.scores(), abs=0.01)
    itself = linear_path(a, a, steps=5, images=4, resolution=SIZE, bn="gaussian")
    assert len(set(itself.scores())) == 1 and itself.barrier() == 0.0


def test_a_path_with_reestimated_statistics_starts_at_a_reestimated(
    independent_pair: list[str],
) -> None:
    a, b = independent_pair
    path = linear_path(a, b, steps=2, images=4, resolution=SIZE, reestimate="real")
    data, unlabelled = val_set("real", 4, SIZE), train_images("real", 4, SIZE)
    for model, score in zip((a, b), path.scores(), strict=True):
        adapted = reestimate_bn(load_model(model, "cpu"), unlabelled)
        assert evaluate(adapted, data, "real").miou == pytest.approx(score, abs=1e-9)
    assert path.reestimated_on == "real" and path.to_json()["reestimated_on"] == "real"
    with pytest.raises(LwmmError, match="dataset 'mars' is not a synthetic domain"):
        linear_path(a, b, reestimate="mars")
    with pytest.raises(LwmmError, match=r"^bn='gaussian' has no effect with reestimate"):
        linear_path(a, b, reestimate="real", bn="gaussian")


def test_a_path_needs_two_models_of_one_architecture_and_class_set(quick_zoo: Path) -> None:
    manifest = load_manifest(quick_zoo)
    anchor, other_classes = scenario_checkpoints(manifest, "other-classes")[:2]
    with pytest.raises(LwmmError, match=r"shapes differently 'segmentation_head\.0\.weight'"):
        linear_path(anchor, other_classes, steps=2, images=2, resolution=SIZE)
    with pytest.raises(LwmmError, match=r"^steps=1: give at least 2"):
        linear_path(anchor, anchor, steps=1)
    with pytest.raises(LwmmError, match="BN rule"):
        linear_path(anchor, anchor, steps=2, bn="mean")


@given(
    ends=st.tuples(st.floats(0, 100), st.floats(0, 100)),
    dip=st.floats(0, 50),
    where=st.integers(1, 9),
)
def test_the_barrier_is_the_deepest_fall_below_the_chord(
    ends: tuple[float, float], dip: float, where: int
) -> None:
    """On a straight line the barrier is 0; a dip at one point below it is the barrier."""
    t = tuple(k / 10 for k in range(11))
    line = [(1 - x) * ends[0] + x * ends[1] for x in t]
    assert LinearPath(("a", "b"), t, {"real": tuple(line)}).barrier() == pytest.approx(0, abs=1e-9)
    line[where] -= dip
    assert LinearPath(("a", "b"), t, {"real": tuple(line)}).barrier() == pytest.approx(dip)


def test_the_interpolate_command_and_its_figure(
    independent_pair: list[str], tmp_path: Path, capsys
) -> None:
    a, b = independent_pair
    args = ["interpolate", a, b, "--steps", "3", "--images", "2", "--size", *map(str, SIZE)]
    assert main([*args, "--json", "--html", str(tmp_path / "path.html")]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["t"] == [0.0, 0.5, 1.0] and set(payload["barrier"]) == {"real"}
    assert (tmp_path / "path.html").read_text().count("plotly-graph-div") == 1
    assert main(args) == 0
    assert f"real: barrier {payload['barrier']['real']:.2f}" in capsys.readouterr().out
    path = LinearPath(tuple(payload["labels"]), tuple(payload["t"]), payload["miou"])
    fig = linear_path_figure({"plain": path, "again": path})
    assert isinstance(fig, go.Figure) and len(fig.data) == 4, "a path and its chord, each"
    assert fig.data[0].name == f"plain: barrier {path.barrier():.1f}"
    assert main(["interpolate", a, b, "--steps", "1"]) == 1
    assert (
        capsys.readouterr().err.strip()
        == "lwmm: error: steps=1: give at least 2 (the two models themselves)"
    )
