"""``benchmarks/tarflow_profile.py``: arguments, the load refusal, the variant switches, the
thunk-kind classification and the tables (nothing is timed)."""

import pathlib

import jax
import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def prof(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import tarflow_profile

    return tarflow_profile


def test_parse_args(prof):
    a = prof.parse_args([])
    assert a.config_names == ["mnist", "small16"] and a.variant_names == list(prof.VARIANTS)
    a = prof.parse_args(["--configs", "small16", "--variants", "current,rolled"])
    assert a.config_names == ["small16"] and a.variant_names == ["current", "rolled"]
    for bad in (["--configs", "cifar"], ["--variants", "fast"], ["--reps", "0"]):
        with pytest.raises(SystemExit):
            prof.parse_args(bad)


def test_refuses_on_a_loaded_machine(prof, tmp_path, capsys):
    out = tmp_path / "p.json"
    assert prof.main(["--max_load", "-1", "--out", str(out)]) == 2
    assert "refusing to run" in capsys.readouterr().out and not out.exists()


def test_variant_switches_are_undone(prof):
    from jaxflows.models import tarflow_sampling as ts
    from jaxflows.nn import transformer

    gelu, hoist = transformer.gelu_erf, ts.hoist_layer_params
    with prof._Patched("jax_gelu"):
        assert transformer.gelu_erf is not gelu
        x = jax.numpy.linspace(-3, 3, 7)
        assert jax.numpy.allclose(transformer.gelu_erf(x), gelu(x), atol=1e-6)
    with prof._Patched("no_hoist"):
        assert ts.hoist_layer_params(None, {"a": 1}) == {"a": 1}
    assert transformer.gelu_erf is gelu and ts.hoist_layer_params is hoist
    from jaxflows.models import tarflow

    matmul = transformer.token_matmul
    x = jax.random.normal(jax.random.key(0), (2, 3, 4, 5))
    w = jax.random.normal(jax.random.key(1), (4, 5, 6))
    with prof._Patched("einsum_dense"):
        assert transformer.token_matmul is not matmul and tarflow.token_matmul is not matmul
        assert jax.numpy.allclose(transformer.token_matmul(x, w, n_in=2), matmul(x, w, n_in=2),
                                  atol=1e-5)
    assert transformer.token_matmul is matmul and tarflow.token_matmul is matmul


def test_kinds_and_tables(prof):
    assert prof._kind("ynn_fusion.3", "%d = f32[2,2] dot(%a, %b)") == "matmul (library dot fusion)"
    assert prof._kind("ynn_fusion.4", "%r = f32[2] reduce(%a, %c)") == "library reduction"
    assert prof._kind("copy_bitcast_fusion.1", "transpose(%x)") == "transpose / copy"
    assert prof._kind("bitcast_broadcast_fusion", "broadcast(%x)") == "materialised broadcast"
    assert prof._kind("multiply_erf_fusion", "%e = f32[4] erf(%x)") == "erf / exp loop"
    assert prof._kind("ThunkExecutor::Execute", "") is None
    rows = [{"config": "mnist", "variant": "current", "grad_s": 3.0, "grad_examples_per_s": 85.3,
             "sample_g0_images_per_s": 230.0, "sample_g2_images_per_s": 100.0},
            {"config": "mnist", "variant": "no_hoist", "sample_g0_images_per_s": 120.0,
             "sample_g2_images_per_s": 60.0}]
    table = prof.tables(rows, [{"config": "mnist", "ms_per_call_by_kind": {"a": 75.0,
                                                                             "b": 25.0}}])
    assert "| mnist | current (-) | 3.000 | 85.3 | 230.0 | 100.0 |" in table
    assert "| mnist | no_hoist (hoisted weights) | - | - | 120.0 | 60.0 |" in table
    assert "| a | 75 | 75% |" in table


def test_command_has_no_machine_path(tmp_path):
    from jaxflows.provenance import recorded_command

    root = str(pathlib.Path(__file__).resolve().parents[1])
    cmd = recorded_command("benchmarks/tarflow_profile.py",
                           ["--profile", "--out", str(tmp_path / "x.json")], root)
    assert cmd == "python benchmarks/tarflow_profile.py --profile --out x.json"
    inside = root + "/benchmarks/results/tarflow_profile.json"
    assert recorded_command("benchmarks/tarflow_profile.py", [f"--out={inside}"], root).endswith(
        "--out benchmarks/results/tarflow_profile.json")
