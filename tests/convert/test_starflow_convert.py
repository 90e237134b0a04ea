"""Official ml-starflow state dicts -> our params: a small official-named checkpoint written with
the torch-free writer, converted by the command line to an Orbax params checkpoint, loaded into
StarFlowModel (and checked loadable by the task's init_from) and compared with the float64 NumPy
transcription of the official forward in tests/models/test_starflow.py; buffers checked and
dropped; clear errors for a missing key, a wrong shape, a bad buffer and unknown keys."""

import functools
import importlib.util
import logging
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows.convert import starflow as conv
from jaxflows.convert.tarflow import load_torch_state_dict, save_torch_state_dict
from jaxflows.models.starflow import StarFlowModel

HERE = os.path.dirname(os.path.abspath(__file__))


@functools.cache
def _ref():
    """tests/models/test_starflow.py: the official-named state dict and NumPy forward."""
    path = os.path.join(os.path.dirname(HERE), "models", "test_starflow.py")
    spec = importlib.util.spec_from_file_location("starflow_official_reference", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _state_dict(seed=0):
    """The notes' small official model (8x8x4 latents, width 64, blocks [2, 2, 4], head dim 32,
    a one-token prefix of 11 features) with its buffers, keys wrapped by DDP."""
    sd = _ref().official_state_dict(np.random.default_rng(seed))
    n, t = 64, 1
    sd["var"] = np.ones((n, 4), np.float32)
    for b in range(3):
        length = n + t if b == 2 else n
        sd[f"blocks.{b}.attn_mask"] = np.tril(np.ones((length, length), np.float32))
    sd["feat_rope.freqs_cos"] = np.ones((n + t, 32), np.float32)
    sd["feat_rope.freqs_sin"] = np.zeros((n + t, 32), np.float32)
    return {f"module.{k}": v for k, v in sd.items()}


def _model(**kw):
    args = dict(input_shape=(8, 8, 4), width=64, layers_per_block=(2, 2, 4), head_dim=32,
                prefix_len=1, prefix_dim=11)
    args.update(kw)
    return StarFlowModel(**args)


def test_cli_converts_to_orbax_and_reproduces_the_official_forward(tmp_path, capsys):
    from jaxflows.train.pretrained import load_init_from, read_tree

    sd = _state_dict()
    path = str(tmp_path / "starflow.pth")
    save_torch_state_dict(path, sd)
    assert set(load_torch_state_dict(path)) == set(sd)
    out = str(tmp_path / "params")
    assert conv.main([path, "--head_dim", "32", "--out", out]) == 0
    assert "'target': 'flow'" in capsys.readouterr().out
    params = read_tree(out)["params"]

    model = _model()
    assert conv.infer_model_kwargs(sd, head_dim=32) == dict(
        input_shape=(8, 8, 4), width=64, layers_per_block=(2, 2, 4), head_dim=32,
        prefix_len=1, prefix_dim=11)
    plain = {k.removeprefix("module."): v for k, v in sd.items()}
    rs = np.random.default_rng(1)
    x, y = rs.standard_normal((2, 4, 8, 8)), rs.standard_normal((2, 1, 11))
    z_ref, _, lds_ref = _ref().official_forward(plain, x, y)
    z, lds, _ = jax.jit(lambda p, x, y: model.apply({"params": p}, x, y))(
        params, jnp.asarray(x.transpose(0, 2, 3, 1), jnp.float32), jnp.asarray(y, jnp.float32))
    np.testing.assert_allclose(np.asarray(z).transpose(0, 3, 1, 2), z_ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(sum(np.asarray(ld).sum((1, 2)) for ld in lds),
                               sum(ld.sum((1, 2)) for ld in lds_ref), rtol=1e-5)

    # the checkpoint loads into a StarFlowTask's 'flow' subtree as config.init_from does it
    from jaxflows.models.starflow_config import default_model_config
    from jaxflows.models.starflow_task import StarFlowTask
    from jaxflows.train.config import base_config
    from jaxflows.train.task import DataInfo

    c = base_config()
    c.model = default_model_config(width=64, layers_per_block=(2, 2, 4), head_dim=32,
                                   text_len=1, text_dim=11, autoencoder="none",
                                   latent_scale=1.0)
    task = StarFlowTask(c, DataInfo({"latent": jax.ShapeDtypeStruct((8, 8, 4), jnp.float32)},
                                    1))
    abstract = jax.eval_shape(lambda: nn.unbox(task.init(jax.random.key(0), {})))
    [(target, values)] = load_init_from([{"path": out, "source": "params", "target": "flow"}],
                                        abstract)
    assert target == "flow"

    # .npz output, and labels through the same proj_txt (one-hot prefix of K + 1 = 11)
    npz = str(tmp_path / "flat.npz")
    assert conv.main([path, "--head_dim", "32", "--num_classes", "10", "--out", npz]) == 0
    flat = np.load(npz)
    np.testing.assert_array_equal(flat["blocks_2/proj_txt_kernel"],
                                  plain["blocks.2.proj_txt.weight"].T)
    assert conv.infer_model_kwargs(sd, 32, num_classes=10)["num_classes"] == 10


def test_buffers_are_checked_and_dropped(caplog):
    sd = _state_dict()
    model = _model()
    sd["module.var"] = np.full((64, 4), 2.0, np.float32)
    with caplog.at_level(logging.WARNING):
        conv.official_to_params(sd, model)
    assert "prior variance" in caplog.text
    bad = dict(sd, **{"module.blocks.0.attn_mask": np.ones((10, 10), np.float32)})
    with pytest.raises(ValueError, match=r"buffer 'blocks.0.attn_mask' has shape \(10, 10\)"):
        conv.official_to_params(bad, model)
    bad = dict(sd, **{"module.feat_rope.freqs_cos": np.ones((65, 16), np.float32)})
    with pytest.raises(ValueError, match=r"buffer 'feat_rope.freqs_cos'.*\[L, 32\]"):
        conv.official_to_params(bad, model)


def test_missing_key_wrong_shape_and_unknown_keys_name_the_key(tmp_path, capsys):
    sd = _state_dict()
    model = _model()
    missing = {k: v for k, v in sd.items() if k != "module.blocks.1.attn_blocks.0.mlp.main.0.bias"}
    with pytest.raises(ValueError, match=r"lacks 'blocks.1.attn_blocks.0.mlp.main.0.bias' "
                                         r"\(expected shape \(256,\)\)"):
        conv.official_to_params(missing, model)
    wrong = dict(sd, **{"module.blocks.2.proj_txt.weight": np.zeros((64, 12), np.float32)})
    with pytest.raises(ValueError, match=r"'blocks.2.proj_txt.weight' has shape \(64, 12\) but "
                                         r"the model needs \(64, 11\)"):
        conv.official_to_params(wrong, model)
    extra = dict(sd, **{"module.label_embedder.weight": np.eye(11, dtype=np.float32)})
    with pytest.raises(ValueError, match="does not use: \\['label_embedder.weight'\\]"):
        conv.official_to_params(extra, model)
    conv.official_to_params(extra, model, ignore=[r"label_embedder\..*"])
    with pytest.raises(ValueError, match="blocks.2.attn_blocks.3"):  # another layout
        conv.official_to_params(sd, _model(layers_per_block=(2, 2, 3)))

    # the command line: one error line naming the key, status 2
    path = str(tmp_path / "missing.pth")
    save_torch_state_dict(path, missing)
    with pytest.raises(SystemExit) as e:
        conv.main([path, "--head_dim", "32", "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "blocks.1.attn_blocks.0.mlp.main.0.bias" in err[-1]
    assert not os.path.exists(tmp_path / "o")
    os.makedirs(tmp_path / "exists")
    with pytest.raises(SystemExit):
        conv.main([path, "--out", str(tmp_path / "exists")])
    assert "already exists" in capsys.readouterr().err
