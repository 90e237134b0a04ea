"""The 2-D toy densities (jaxflows.data.toy2d) and their TFDS builder / registry names."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jaxflows.data import toy2d
from jaxflows.data.builders import toy2d as toy2d_builder
from jaxflows.data.registry import DATASETS, dataset_info, load_source, prepare
from jaxflows.data.toy2d import DENSITIES, NAMES, kde_log_density

# the official samplers' parameters (arXiv 2506.05240 code, toy_examples), raw coordinates
RAW_FACTS = {
    "gmm5": dict(radius=3.0, std=0.3),
    "grid": dict(ticks=(-1.5, -0.5, 0.5, 1.5), std=0.1),
    "rings": dict(radii=(4 / 3, 8 / 3, 4.0), noise=0.1),
}


def test_names_and_api():
    assert tuple(DENSITIES) == NAMES == ("gmm5", "grid", "moons", "rings", "spiral", "swissroll")
    for name, d in DENSITIES.items():
        assert d.name == name
        assert d.exact is True and callable(d.log_density)
        assert d.method == ("quadrature" if name in ("moons", "spiral", "swissroll")
                            else "closed form")


@pytest.mark.parametrize("name", NAMES)
def test_sampler_deterministic_shapes_dtypes(name):
    d = DENSITIES[name]
    a = d.sample(np.random.default_rng(3), 257)
    b = d.sample(np.random.default_rng(3), 257)
    c = d.sample(np.random.default_rng(4), 257)
    assert a.shape == (257, 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert d.sample(np.random.default_rng(0), 0).shape == (0, 2)
    lp = d.log_density(a)
    assert lp.shape == (257,) and lp.dtype == np.float64 and np.all(np.isfinite(lp))
    with pytest.raises(ValueError, match=r"\[n, 2\]"):
        d.log_density(np.zeros((3, 3)))
    odd = d.log_density(np.asarray([[np.nan, 0.0], [0.3, 0.2], [np.inf, 1.0]]))
    assert np.isnan(odd[0]) and np.isfinite(odd[1]) and not np.isfinite(odd[2])
    assert d.log_density(np.zeros((0, 2))).shape == (0,)


@pytest.mark.parametrize("name", NAMES)
def test_scale_is_pooled_std_and_samples_are_unit_std(name):
    """scale = the raw data's pooled std (both coordinates, torch.std over [N, 2]); the
    normalised samples have empirical pooled std 1 (up to Monte-Carlo error)."""
    d = DENSITIES[name]
    raw = d.sample_raw(np.random.default_rng(11), 200_000)
    assert d.scale == pytest.approx(np.std(raw, ddof=1), rel=4e-3)
    x = d.sample(np.random.default_rng(12), 200_000).astype(np.float64)
    assert np.std(x, ddof=1) == pytest.approx(1.0, rel=4e-3)


def test_gmm5_scale_closed_form():
    # pooled second moment (R^2 + 2 s^2) / 2 around a pooled mean of 0
    r, s = RAW_FACTS["gmm5"]["radius"], RAW_FACTS["gmm5"]["std"]
    assert DENSITIES["gmm5"].scale == pytest.approx(math.sqrt((r**2 + 2 * s**2) / 2), rel=1e-12)
    assert DENSITIES["grid"].scale == pytest.approx(math.sqrt(1.25 + 0.01), rel=1e-12)
    radii, noise = np.asarray(RAW_FACTS["rings"]["radii"]), RAW_FACTS["rings"]["noise"]
    assert DENSITIES["rings"].scale == pytest.approx(
        math.sqrt((np.mean(radii**2) + noise**2) / 2), rel=1e-12)


def test_raw_definitions_match_official_parameters():
    rng = np.random.default_rng(0)
    gmm = DENSITIES["gmm5"].sample_raw(rng, 20000)
    angles = np.mod(np.arctan2(gmm[:, 1], gmm[:, 0]), 2 * np.pi)
    k = np.round(angles / (2 * np.pi / 5)) % 5
    means = 3.0 * np.stack([np.cos(2 * np.pi * k / 5), np.sin(2 * np.pi * k / 5)], -1)
    assert np.std(gmm - means) == pytest.approx(0.3, rel=0.03)
    grid = DENSITIES["grid"].sample_raw(rng, 20000)
    snapped = np.clip(np.round(grid - 0.5) + 0.5, -1.5, 1.5)
    assert np.std(grid - snapped) == pytest.approx(0.1, rel=0.03)
    rings = DENSITIES["rings"].sample_raw(rng, 30000)
    rho = np.hypot(*rings.T)
    nearest = np.asarray(RAW_FACTS["rings"]["radii"])[
        np.argmin(np.abs(rho[:, None] - np.asarray(RAW_FACTS["rings"]["radii"])), -1)]
    assert np.std(rho - nearest) == pytest.approx(0.1, rel=0.03)
    assert np.max(rho) < 4.7
    moons = DENSITIES["moons"].sample_raw(rng, 20000)
    # half circles of radius 2 around (0, 0) (upper) and (2, -0.5) (lower), equal weights
    np.testing.assert_allclose(moons.mean(0), [1.0, -0.25], atol=0.03)
    dist = np.stack([np.hypot(*moons.T), np.hypot(moons[:, 0] - 2, moons[:, 1] + 0.5)], -1)
    resid = np.min(np.abs(dist - 2.0), -1)
    assert np.sqrt(np.mean(resid**2)) == pytest.approx(0.1, rel=0.05)
    swiss = DENSITIES["swissroll"].sample_raw(rng, 20000)
    assert np.max(np.hypot(*swiss.T)) == pytest.approx(6.0, abs=0.5)
    spiral = DENSITIES["spiral"].sample_raw(rng, 20000)
    assert np.max(np.hypot(*spiral.T)) == pytest.approx(2.0, abs=0.5)


def _grid(half_width: float, h: float):
    g = np.arange(-half_width, half_width, h) + 0.5 * h + 1e-3  # avoids rings' rho = 0
    return np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)


@pytest.mark.parametrize("name", NAMES)
def test_log_density_integrates_to_one(name):
    d = DENSITIES[name]
    reach = float(np.max(np.abs(d.sample(np.random.default_rng(0), 20000)))) + 1.0
    # a grid step of 2/3 of the noise std: Riemann sums of Gaussians this smooth are exact to
    # ~exp(-2 pi^2 (std / h)^2) ~ 1e-19
    h = 0.1 / d.scale / 1.5
    pts = _grid(reach, h)
    total = float(np.sum(np.exp(d.log_density(pts))) * h * h)
    assert total == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("name", ["moons", "spiral", "swissroll"])
def test_quadrature_is_converged(name):
    d = DENSITIES[name]
    x = np.concatenate([d.sample(np.random.default_rng(5), 400),
                        np.random.default_rng(6).uniform(-3, 3, (400, 2))]).astype(np.float64)
    lp = d.log_density(x)
    fine = d._raw_log_density(x * d.scale, refine=2) + 2 * math.log(d.scale)
    near = lp > -50
    assert near.sum() > 400
    np.testing.assert_allclose(lp[near], fine[near], atol=1e-7)
    np.testing.assert_allclose(lp, fine, rtol=1e-4)  # far away (log p ~ -1000) too


@pytest.mark.parametrize("name", ["gmm5", "grid", "rings"])
def test_closed_forms_against_direct_formula(name):
    """Scaling is consistent: log p_norm(x) = log p_raw(s x) + 2 log s, and p_raw is the
    textbook formula of the raw model."""
    d = DENSITIES[name]
    x = d.sample(np.random.default_rng(8), 200).astype(np.float64)
    raw = x * d.scale
    if name == "rings":
        rho = np.hypot(*raw.T)
        radii, s = np.asarray(RAW_FACTS["rings"]["radii"]), RAW_FACTS["rings"]["noise"]
        phi = lambda u: np.exp(-0.5 * (u / s) ** 2) / (s * math.sqrt(2 * math.pi))
        p = np.mean(phi(rho[:, None] - radii) + phi(rho[:, None] + radii), -1) / (2 * np.pi * rho)
    else:
        if name == "gmm5":
            a = 2 * np.pi * np.arange(5) / 5
            means, s = 3.0 * np.stack([np.cos(a), np.sin(a)], -1), 0.3
        else:
            t = np.asarray(RAW_FACTS["grid"]["ticks"])
            means = np.stack(np.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
            s = 0.1
        d2 = np.sum((raw[:, None, :] - means[None]) ** 2, -1)
        p = np.mean(np.exp(-0.5 * d2 / s**2) / (2 * np.pi * s**2), -1)
    np.testing.assert_allclose(d.log_density(x), np.log(p) + 2 * math.log(d.scale), atol=1e-9)
    np.testing.assert_allclose(d.raw_log_density(raw), np.log(p), atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_log_density_agrees_with_histogram(name):
    """The density matches a 2-D histogram of 200k samples where the cells are well populated."""
    d = DENSITIES[name]
    x = d.sample(np.random.default_rng(21), 200_000).astype(np.float64)
    h = 0.1
    edges = np.arange(-3.5, 3.5 + h, h)
    counts, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=[edges, edges])
    # cell probabilities by a 4 x 4 midpoint rule inside each cell
    sub = (np.arange(4) + 0.5) / 4 * h
    cx = edges[:-1, None] + sub[None, :]
    pts = np.stack(np.meshgrid(cx.ravel(), cx.ravel(), indexing="ij"), -1).reshape(-1, 2)
    dens = np.exp(d.log_density(pts)).reshape(len(cx), 4, len(cx), 4)
    prob = dens.mean(axis=(1, 3)) * h * h
    expected = prob * len(x)
    busy = expected > 100
    assert busy.sum() >= 20
    z = (counts[busy] - expected[busy]) / np.sqrt(expected[busy])
    assert np.max(np.abs(z)) < 5.5
    assert abs(np.mean(z)) < 0.5


def test_kde_agrees_with_exact_density():
    d = DENSITIES["gmm5"]
    ref = d.sample(np.random.default_rng(0), 100_000)
    x = d.sample(np.random.default_rng(1), 300)
    kde = kde_log_density(x, ref, bandwidth=0.1)
    exact = d.log_density(x)
    # h = 0.1 smooths components of std 0.3 / 2.14 = 0.14: KDE is biased low but close
    assert np.mean(kde) == pytest.approx(np.mean(exact), abs=0.3)
    assert np.corrcoef(kde, exact)[0, 1] > 0.95


def test_pruned_kernel_sum_matches_dense():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(700, 2)) * 2
    log_w = np.log(rng.dirichlet(np.ones(700)))
    x = np.concatenate([rng.normal(size=(500, 2)) * 2, rng.uniform(-30, 30, (50, 2))])
    fast = toy2d._isotropic_kernel_log_density(x, centers, log_w, 0.1)
    dense = toy2d._isotropic_kernel_log_density(x, centers, log_w, 0.1, margin=np.inf)
    np.testing.assert_allclose(fast, dense, rtol=1e-12, atol=1e-9)


# --- builder and registry -----------------------------------------------------------------------

def test_registry_names():
    for name in NAMES:
        spec = DATASETS[f"toy2d/{name}"]
        assert spec.embedded and dict(spec.builder_kwargs) == {"config": name}
        assert spec.splits == {"train": 50000, "validation": 5000, "test": 5000}


def test_split_generation_reproducible_and_disjoint():
    for name in ("gmm5", "rings"):
        x_tr, lp_tr = toy2d_builder.generate_split(name, "train", 3000)
        x_tr2, _ = toy2d_builder.generate_split(name, "train", 3000)
        np.testing.assert_array_equal(x_tr, x_tr2)
        x_va, _ = toy2d_builder.generate_split(name, "validation", 3000)
        x_te, _ = toy2d_builder.generate_split(name, "test", 3000)
        rows = {tuple(r) for r in x_tr}
        assert not any(tuple(r) in rows for r in x_va) and not any(tuple(r) in rows for r in x_te)
        assert not np.array_equal(x_va, x_te)
        assert lp_tr.dtype == np.float32 and np.all(np.isfinite(lp_tr))
    # configs have their own streams
    assert not np.array_equal(toy2d_builder.generate_split("gmm5", "test", 10)[0] / 1,
                              toy2d_builder.generate_split("grid", "test", 10)[0])


@pytest.fixture(scope="module")
def moons_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("toy2d"))
    info = dataset_info("toy2d/moons", d)  # embedded: prepared on first use
    return d, info


def test_dataset_info_and_source(moons_dir):
    data_dir, info = moons_dir
    assert info["prepared"] and info["splits"] == {"train": 50000, "validation": 5000,
                                                   "test": 5000}
    spec = info["element_spec"]
    assert set(spec) == {"x", "log_density"}
    assert spec["x"].shape == (2,) and spec["x"].dtype == np.float32
    assert spec["log_density"].shape == () and spec["log_density"].dtype == np.float32
    assert info["metadata"]["density"] == "moons"
    assert info["metadata"]["scale"] == pytest.approx(DENSITIES["moons"].scale)
    assert info["metadata"]["exact"] is True
    src = load_source("toy2d/moons", "train", data_dir)
    assert len(src) == 50000
    ex = src[0]
    assert set(ex) == {"x", "log_density"}
    # records are the documented seeded draws, in draw order
    x_val, lp_val = toy2d_builder.generate_split("moons", "validation")
    val = load_source("toy2d/moons", "validation", data_dir)
    for i in (0, 1, 4999):
        np.testing.assert_array_equal(val[i]["x"], x_val[i])
        assert val[i]["log_density"] == lp_val[i]
    # the stored log-density is the density at the stored float32 point
    pts = np.stack([val[i]["x"] for i in range(20)]).astype(np.float64)
    np.testing.assert_allclose([val[i]["log_density"] for i in range(20)],
                               DENSITIES["moons"].log_density(pts), rtol=1e-6, atol=1e-6)
    # splits are disjoint
    train_x = {tuple(src[i]["x"]) for i in range(2000)}
    assert not any(tuple(x_val[i]) in train_x for i in range(5000))
    # idempotent prepare; folder DATA_DIR/jaxflows_toy2d/moons/VERSION
    assert prepare("toy2d/moons", data_dir) == info["splits"]
    import os

    assert os.path.isdir(os.path.join(data_dir, "jaxflows_toy2d", "moons", "1.0.0"))


def test_cli_prepares_a_config_and_rejects_unknown(moons_dir, capsys):
    from jaxflows import cli

    data_dir, _ = moons_dir
    assert cli.main(["data", "prepare", "toy2d/moons", "--data_dir", data_dir]) in (0, None)
    assert "toy2d/moons: train 50000, validation 5000, test 5000" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["data", "prepare", "toy2d/nope", "--data_dir", data_dir])


def test_cli_group_prepares_every_config(monkeypatch, capsys, tmp_path):
    """``jaxflows data prepare toy2d`` prepares all six configs (builds are stubbed here)."""
    from jaxflows import cli
    from jaxflows.data import cli as data_cli

    seen = []
    monkeypatch.setattr(data_cli, "prepare_command",
                        lambda name, data_dir=None, source_path=None: seen.append(name)
                        or [f"{name}: ok"])
    assert cli.main(["data", "prepare", "toy2d", "--data_dir", str(tmp_path)]) in (0, None)
    assert seen == [f"toy2d/{n}" for n in NAMES]
    assert capsys.readouterr().out.count(": ok") == 6
