"""The aggregator's hierarchical path (streams.pipeline.shrinkage): parents first, sparse children shrunk."""

from __future__ import annotations

import re

import numpy as np
import pytest

from recalibrators import Calibrator
from recalibrators.hierarchy import fit_tree
from recalibrators.segments import segment_key
from streams.dashboard.pages import map_svg, render_map
from streams.dev.synthetic import SBend, make_stream
from streams.pipeline.aggregator import Aggregator, encode_partial, with_held_back
from streams.pipeline.config import ModelConfig

ROOT, PARENT, CHILD = "ctr:v1:*", "ctr:v1:placement=feed", "ctr:v1:placement=feed|platform=ios"


def calibrators() -> dict[str, Calibrator]:
    """A sparse child (300 examples) inside a parent of 20,000 inside `*` (40,000), every level fed its subtree."""
    rng = np.random.default_rng(0)
    cals = {key: Calibrator() for key in (ROOT, PARENT, CHILD)}
    for n, keys in ((300, (CHILD, PARENT, ROOT)), (19_700, (PARENT, ROOT)), (20_000, (ROOT,))):
        s, y, ts, _ = make_stream(rng, n, SBend())
        for key in keys:
            cals[key].learn_batch(s, y, ts_ms=ts, holdout=np.arange(n) % 20 == 0)
    return cals


def aggregator(shrink: bool) -> tuple[Aggregator, dict[str, Calibrator]]:
    cfg = ModelConfig(min_samples=1_000, shrink_to_parent=shrink)
    agg = Aggregator(lambda name: cfg)
    cals = calibrators()
    for key in (CHILD, ROOT, PARENT):  # arrival order must not matter
        agg.add(key, encode_partial(0, "ctr", "v1", key.split(":", 2)[2], cals[key]))
    return agg, cals


def test_sparse_child_is_published_shrunk_toward_its_parent():
    agg, cals = aggregator(shrink=True)
    maps = {f"ctr:v1:{segment_key(m.segment_dict)}": m for m in agg.take_dirty()}
    assert set(maps) == {ROOT, PARENT, CHILD}  # the 300-example child passes the gate: no min_samples cliff
    child, parent = maps[CHILD], maps[PARENT]
    assert child.method == "hierarchical" and parent.method == "hierarchical" and maps[ROOT].method == "isotonic"
    assert agg.shrinkage.order([CHILD, ROOT, PARENT]) == [ROOT, PARENT, CHILD]
    # The same maps as fitting the tree directly, on all examples (the held-back ones too).
    direct = fit_tree({k: with_held_back(c) for k, c in cals.items()}, {ROOT: None, PARENT: ROOT, CHILD: PARENT}).maps
    grid = np.linspace(0.001, 0.2, 200)
    np.testing.assert_allclose(child.apply(grid), direct[CHILD].apply(grid), rtol=1e-9)
    own = cals[CHILD].to_map()
    assert np.abs(child.apply(grid) - parent.apply(grid)).mean() < np.abs(own.apply(grid) - parent.apply(grid)).mean()
    assert child.y_lo is not None and child.ess is not None and child.model_version == "v1"


def test_without_shrinkage_the_sparse_child_waits_for_min_samples():
    agg, _ = aggregator(shrink=False)
    published = agg.take_dirty()
    assert len(published) == 2 and all(m.method == "isotonic" for m in published)
    assert "effective" in agg.refused[CHILD] or "samples" in agg.refused[CHILD]


def test_shrink_to_parent_must_be_a_boolean():
    with pytest.raises(ValueError, match="shrink_to_parent"):
        ModelConfig(shrink_to_parent="yes")


def test_dashboard_draws_the_map_and_its_band():
    agg, _ = aggregator(shrink=True)
    child = next(m for m in agg.take_dirty() if m.segment_dict.get("platform") == "ios")
    page = render_map(child, [child], now_s=child.updated_at / 1000)
    assert '<svg id="map"' in page and '<polygon id="band"' in page and "90% band" in page
    n_points = len(re.search(r'<polygon id="band" points="([^"]+)"', page).group(1).split())
    assert n_points == 2 * (child.x.size - 2)  # upper then lower edge over the interior knots
    plain = map_svg(child.with_meta(y_lo=None, y_hi=None, ess=None))
    assert "<polyline" in plain and "band" not in plain
