"""``benchmarks/tarflow_matmul_floor.py``: the HLO dot reader, the einsum it builds from a dot's
dimension numbers and layouts, the arguments and the load refusal (nothing is timed)."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"

HLO = """HloModule m

%fused_dot (param_0: f32[6,4], param_1: f32[6,5]) -> f32[4,5] {
  %param_0 = f32[6,4]{1,0} parameter(0)
  %param_1 = f32[6,5]{1,0} parameter(1)
  ROOT %dot.1 = f32[4,5]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={0}, \
rhs_contracting_dims={0}
}

ENTRY %main (p0: f32[6,4], p1: f32[6,5], p2: f32[2,3,4], p3: f32[2,4,3]) -> f32[4,5] {
  %p0 = f32[6,4]{1,0} parameter(0)
  %p1 = f32[6,5]{1,0} parameter(1)
  %p2 = f32[2,3,4]{2,1,0} parameter(2)
  %p3 = f32[2,4,3]{1,2,0} parameter(3)
  %f.1 = f32[4,5]{1,0} fusion(%p0, %p1), kind=kCustom, calls=%fused_dot
  %f.2 = f32[4,5]{1,0} fusion(%p0, %p1), kind=kCustom, calls=%fused_dot
  %dot.2 = f32[2,3,3]{2,1,0} dot(%p2, %p3), lhs_batch_dims={0}, \
lhs_contracting_dims={2}, rhs_batch_dims={0}, rhs_contracting_dims={1}
  ROOT %add = f32[4,5]{1,0} add(%f.1, %f.2)
}
"""


@pytest.fixture
def floor(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import tarflow_matmul_floor

    return tarflow_matmul_floor


def test_hlo_dots_counts_call_sites_and_reads_layouts(floor):
    dots = {d["spec"]: d for d in floor.hlo_dots(HLO)}
    assert len(dots) == 2
    wgrad = dots["ab,ac->bc"]
    assert wgrad["lhs"] == [6, 4] and wgrad["rhs"] == [6, 5]
    assert wgrad["count"] == 2 and wgrad["flops"] == 2 * 4 * 5 * 6
    # p3 is [2, 4, 3] with layout {1,2,0}: physically [2, 3, 4], its contracted axis minor
    (batched,) = [d for s, d in dots.items() if s != "ab,ac->bc"]
    assert batched["lhs"] == [2, 3, 4] and batched["rhs"] == [2, 3, 4]
    assert batched["count"] == 1 and batched["flops"] == 2 * 2 * 3 * 3 * 4
    a = np.random.default_rng(0).standard_normal((2, 3, 4))
    b = np.random.default_rng(1).standard_normal((2, 4, 3))
    want = np.einsum("nik,nkj->nij", a, b)
    got = np.einsum(batched["spec"], a, np.ascontiguousarray(b.transpose(0, 2, 1)))
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_hlo_dots_refuses_loops(floor):
    with pytest.raises(ValueError, match="while loop"):
        floor.hlo_dots(HLO + "%w = (f32[]) while(%t), condition=%c, body=%b\n")


def test_dot_einsum_matches_dot_general(floor):
    dims = {"lhs_contracting_dims": [1], "rhs_contracting_dims": [1]}
    spec, lhs, rhs = floor.dot_einsum([3, 4], [5, 4], dims, ([1, 0], [1, 0], [1, 0]))
    x = jax.random.normal(jax.random.key(0), (3, 4))
    w = jax.random.normal(jax.random.key(1), (5, 4))
    want = jax.lax.dot_general(x, w, (((1,), (1,)), ((), ())))
    assert lhs == [3, 4] and rhs == [5, 4]
    np.testing.assert_allclose(jnp.einsum(spec, x, w), want, rtol=1e-6)
    # an output stored column-major is written transposed
    spec_t, _, _ = floor.dot_einsum([3, 4], [5, 4], dims, ([1, 0], [1, 0], [0, 1]))
    np.testing.assert_allclose(jnp.einsum(spec_t, x, w), want.T, rtol=1e-6)


def test_the_grad_of_a_tarflow_is_read_whole(floor, monkeypatch):
    import tarflow_profile

    # a tiny config of the same form: 8x8x1 images, patch 2, width 64, 2 blocks x 2 layers
    monkeypatch.setitem(tarflow_profile.CONFIGS, "tiny", ((8, 8, 1), 2, 64, 2, 2, 0, 4, 1.0))
    _, xla_flops, hlo = floor.grad_and_hlo("tiny", steps=1)
    dots = floor.hlo_dots(hlo)
    gflop = sum(d["flops"] * d["count"] for d in dots)
    # the dots hold almost all of XLA's flop count (the rest is elementwise work)
    assert 0.95 * xla_flops < gflop <= xla_flops


def test_parse_args_and_refusal(floor, tmp_path, capsys):
    a = floor.parse_args([])
    assert a.config_names == ["mnist", "small16"] and a.reps == 15
    for bad in (["--configs", "cifar"], ["--official", "x"], ["--reps", "0"]):
        with pytest.raises(SystemExit):
            floor.parse_args(bad)
    out = tmp_path / "f.json"
    assert floor.main(["--max_load", "-1", "--out", str(out)]) == 2
    assert "refusing to run" in capsys.readouterr().out and not out.exists()
