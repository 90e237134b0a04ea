"""Official ml-tarflow state dicts -> our params: the torch zip reader/writer, the key map, and
a NumPy re-implementation of the official forward as ground truth."""

import io
import pickle
import re
import zipfile

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from scipy.special import erf

from jaxflows.convert import tarflow as conv
from jaxflows.errors import UserError
from jaxflows.models.tarflow import TarFlowModel

IMG, P, C, T, K, HD, NCLS = (8, 8, 2), 2, 32, 2, 2, 16, 3
N, D = 16, 8


def official_state_dict(rng, nvp=True, num_classes=NCLS, width=C):
    """Random tensors with ml-tarflow's key names and PyTorch shapes ([out, in] weights)."""
    sd = {}
    out = 2 * D if nvp else D
    r = lambda *s: (0.1 * rng.standard_normal(s)).astype(np.float32)
    for t in range(T):
        b = f"blocks.{t}."
        sd[b + "attn_mask"] = np.tril(np.ones((N, N), np.float32))
        sd[b + "pos_embed"] = r(N, width)
        if num_classes:
            sd[b + "class_embed"] = r(num_classes, 1, width)
        sd[b + "proj_in.weight"], sd[b + "proj_in.bias"] = r(width, D), r(width)
        for k in range(K):
            a = f"{b}attn_blocks.{k}."
            sd[a + "attention.norm.weight"] = 1 + r(width)
            sd[a + "attention.norm.bias"] = r(width)
            sd[a + "attention.qkv.weight"] = r(3 * width, width)
            sd[a + "attention.qkv.bias"] = r(3 * width)
            sd[a + "attention.proj.weight"] = r(width, width)
            sd[a + "attention.proj.bias"] = r(width)
            sd[a + "mlp.norm.weight"], sd[a + "mlp.norm.bias"] = 1 + r(width), r(width)
            sd[a + "mlp.main.0.weight"] = r(4 * width, width)
            sd[a + "mlp.main.0.bias"] = r(4 * width)
            sd[a + "mlp.main.2.weight"], sd[a + "mlp.main.2.bias"] = r(width, 4 * width), r(width)
        sd[b + "proj_out.weight"], sd[b + "proj_out.bias"] = r(out, width), r(out)
    sd["var"] = (np.ones((N, D)) if nvp else 0.5 + rng.random((N, D))).astype(np.float32)
    return sd


def _ln(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def official_forward(sd, x_nchw, y, nvp=True):
    """ml-tarflow ``Model.forward`` transcribed to NumPy (float64): unfold patches (channel-major),
    MetaBlocks with flip on odd blocks, mean class embedding for y = -1."""
    x = x_nchw.astype(np.float64)
    bsz, cimg, h, w = x.shape
    tok = x.reshape(bsz, cimg, h // P, P, w // P, P).transpose(0, 2, 4, 1, 3, 5)
    tok = tok.reshape(bsz, N, cimg * P * P)
    heads = C // HD
    logdets = np.zeros(bsz)
    for t in range(T):
        g = lambda k, t=t: sd[f"blocks.{t}.{k}"].astype(np.float64)
        flip = t % 2 == 1
        xt = tok[:, ::-1] if flip else tok
        pos = g("pos_embed")[::-1] if flip else g("pos_embed")
        hdn = xt @ g("proj_in.weight").T + g("proj_in.bias") + pos
        if y is not None:
            ce = g("class_embed")
            hdn = hdn + np.where((y >= 0)[:, None, None], ce[np.clip(y, 0, None)], ce.mean(0))
        mask = np.tril(np.ones((N, N), bool))
        for k in range(K):
            a = lambda n, g=g, k=k: g(f"attn_blocks.{k}.{n}")
            nrm = _ln(hdn, a("attention.norm.weight"), a("attention.norm.bias"))
            qkv = nrm @ a("attention.qkv.weight").T + a("attention.qkv.bias")
            qkv = qkv.reshape(bsz, N, 3 * heads, HD).transpose(0, 2, 1, 3)
            q, kk, v = np.split(qkv, 3, axis=1)
            logits = q @ kk.transpose(0, 1, 3, 2) / np.sqrt(HD)
            logits = np.where(mask, logits, -np.inf)
            att = np.exp(logits - logits.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            o = (att @ v).transpose(0, 2, 1, 3).reshape(bsz, N, C)
            hdn = hdn + o @ a("attention.proj.weight").T + a("attention.proj.bias")
            nrm = _ln(hdn, a("mlp.norm.weight"), a("mlp.norm.bias"))
            m = nrm @ a("mlp.main.0.weight").T + a("mlp.main.0.bias")
            m = 0.5 * m * (1 + erf(m / np.sqrt(2)))
            hdn = hdn + m @ a("mlp.main.2.weight").T + a("mlp.main.2.bias")
        out = hdn @ g("proj_out.weight").T + g("proj_out.bias")
        out = np.concatenate([np.zeros_like(out[:, :1]), out[:, :-1]], axis=1)
        xa, xb = (out[..., :D], out[..., D:]) if nvp else (np.zeros_like(out), out)
        z = (xt - xb) * np.exp(-xa)
        tok = z[:, ::-1] if flip else z
        logdets += -xa.mean(axis=(1, 2))
    return tok, logdets


def _model(nvp=True, num_classes=NCLS):
    return TarFlowModel(image_shape=IMG, patch_size=P, width=C, num_blocks=T, layers_per_block=K,
                        head_dim=HD, num_classes=num_classes, nvp=nvp)


def _roundtrip(sd):
    buf = io.BytesIO()
    conv.save_torch_state_dict(buf, sd)
    buf.seek(0)
    return conv.load_torch_state_dict(buf)


@pytest.mark.parametrize("nvp,num_classes", [(True, NCLS), (False, 0)])
def test_converted_forward_matches_official(nvp, num_classes):
    rng = np.random.default_rng(0)
    sd = official_state_dict(rng, nvp, num_classes)
    loaded = _roundtrip(sd)
    assert list(loaded) == list(sd)
    for k in sd:
        np.testing.assert_array_equal(loaded[k], sd[k])
    model = _model(nvp, num_classes)
    assert conv.infer_model_kwargs(loaded, image_channels=2) == dict(
        image_shape=IMG, patch_size=P, width=C, num_blocks=T, layers_per_block=K,
        num_classes=num_classes, nvp=nvp)
    params = conv.convert_state_dict(loaded, model)
    y0 = jnp.zeros((1,), jnp.int32) if num_classes else None
    ref_shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *IMG)), y0)
    import flax.linen as nn
    conv.check_against(params, nn.unbox(ref_shapes)["params"])

    x_nchw = rng.uniform(-1, 1, (3, IMG[2], IMG[0], IMG[1]))
    y = np.array([0, 2, -1]) if num_classes else None
    z_ref, ld_ref = official_forward(sd, x_nchw, y, nvp)
    z, ld = jax.jit(lambda p, x, y: model.apply({"params": p}, x, y))(
        params, jnp.asarray(x_nchw.transpose(0, 2, 3, 1), jnp.float32),
        None if y is None else jnp.asarray(y))
    from jaxflows.nn.patches import ours_to_official
    z_off = np.asarray(z)[..., ours_to_official(P, IMG[2])]
    np.testing.assert_allclose(z_off, z_ref, atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(ld, ld_ref, atol=1e-5)
    if not nvp:
        from jaxflows.nn.patches import official_to_ours
        np.testing.assert_allclose(np.exp(params["prior_logvar"]),
                                   sd["var"][:, official_to_ours(P, IMG[2])], rtol=1e-6)


def test_shape_mismatch_and_key_errors():
    rng = np.random.default_rng(1)
    model = _model()
    sd = official_state_dict(rng)
    bad = dict(sd)
    bad["blocks.1.attn_blocks.0.attention.qkv.weight"] = np.zeros((3 * C, C + 1), np.float32)
    with pytest.raises(ValueError, match=r"attention.qkv.weight' has shape \(96, 33\).*\(96, 32\)"):
        conv.convert_state_dict(bad, model)
    missing = {k: v for k, v in sd.items() if k != "blocks.0.pos_embed"}
    with pytest.raises(ValueError, match="lacks 'blocks.0.pos_embed'"):
        conv.convert_state_dict(missing, model)
    with pytest.raises(ValueError, match="does not use.*blocks.0.class_embed"):
        conv.convert_state_dict(sd, _model(num_classes=0))
    wide = official_state_dict(rng, width=64)
    with pytest.raises(ValueError, match=r"proj_in.weight' has shape \(64, 8\).*\(32, 8\)"):
        conv.convert_state_dict(wide, model)


def test_reader_formats_and_safety(tmp_path):
    # a file path, a non-default archive folder name, bfloat16 and int64 storages
    sd = {"a": np.arange(6, dtype=np.float32).reshape(2, 3),
          "b": np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16),
          "c": np.array(7, dtype=np.int64)}
    path = tmp_path / "m.pth"
    conv.save_torch_state_dict(path, sd, archive_name="m")
    out = conv.load_torch_state_dict(path)
    for k in sd:
        assert out[k].dtype == sd[k].dtype and np.array_equal(out[k], sd[k])
    # strided (non-contiguous) tensors, as torch stores views
    storage = np.arange(6, dtype=np.float32)
    t = conv._rebuild_tensor_v2(storage, 0, (3, 2), (1, 3))
    np.testing.assert_array_equal(t, np.arange(6, dtype=np.float32).reshape(2, 3).T)
    # anything but a state dict's globals is refused
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R.")
    evil.seek(0)
    with pytest.raises(pickle.UnpicklingError, match="os.system"):
        conv.load_torch_state_dict(evil)
    legacy = tmp_path / "old.pth"
    legacy.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="not a zip-format"):
        conv.load_torch_state_dict(legacy)


def test_flatten_roundtrip():
    tree = {"a": {"b": np.ones(2), "c": {"d": np.zeros(1)}}, "e": np.ones(3)}
    flat = conv.flatten_params(tree)
    assert set(flat) == {"a/b", "a/c/d", "e"}
    back = conv.unflatten_params(flat)
    assert jax.tree.all(jax.tree.map(np.array_equal, back, tree))


def test_cli_writes_npz(tmp_path):
    sd = official_state_dict(np.random.default_rng(2))
    ckpt = tmp_path / "mnist_model_2_32_2_2_0.10.pth"
    conv.save_torch_state_dict(ckpt, sd)
    out = tmp_path / "p.npz"
    conv.main([str(ckpt), "--image_channels", "2", "--head_dim", str(HD), "--out", str(out)])
    back = conv.unflatten_params(dict(np.load(out)))
    direct = conv.convert_state_dict(sd, _model())
    assert jax.tree.all(jax.tree.map(np.array_equal, back, direct))


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_cli_refuses_files_that_are_not_torch_checkpoints(tmp_path, capsys):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps({"a": 1}))
    cases = {
        garbage: "is not a zip-format torch checkpoint",
        legacy: "is not a zip-format torch checkpoint",
        _zip(tmp_path / "nopkl.pth", {"archive/data/0": b"\0" * 8}):
            "is a zip but not a torch checkpoint: expected one data.pkl, found none",
        _zip(tmp_path / "badpkl.pth", {"archive/data.pkl": b"\x80\x02garbage"}): "badpkl.pth: ",
        tmp_path / "missing.pth": "does not exist",
        tmp_path: "is a directory",
    }
    for path, what in cases.items():
        with pytest.raises(UserError, match=re.escape(what)):
            conv.load_torch_state_dict(path)
        with pytest.raises(SystemExit) as exit_info:
            conv.main([str(path), "--out", str(tmp_path / "never")])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
        assert str(path) in err and what in err, err
        assert not (tmp_path / "never").exists()
    # still a ValueError (and the pickle problems an UnpicklingError), as before
    with pytest.raises(ValueError):
        conv.load_torch_state_dict(garbage)
    with pytest.raises(pickle.UnpicklingError):
        conv.load_torch_state_dict(tmp_path / "badpkl.pth")
    # a torch file that is not an ml-tarflow state dict
    other = tmp_path / "other.pth"
    conv.save_torch_state_dict(other, {"fc.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(SystemExit) as exit_info:
        conv.main([str(other), "--out", str(tmp_path / "never")])
    assert exit_info.value.code == 2
    assert "not an ml-tarflow state dict" in capsys.readouterr().err


def test_cli_writes_orbax_params_checkpoint(tmp_path, capsys):
    from jaxflows.train.pretrained import read_tree

    sd = official_state_dict(np.random.default_rng(3))
    ckpt = tmp_path / "mnist_model_2_32_2_2_0.10.pth"
    conv.save_torch_state_dict(ckpt, sd)
    out = tmp_path / "params_ckpt"
    args = [str(ckpt), "--image_channels", "2", "--head_dim", str(HD), "--out", str(out)]
    assert conv.main(args) == 0
    assert out.is_dir() and "Orbax checkpoint" in capsys.readouterr().out
    back = read_tree(str(out))["params"]
    direct = conv.convert_state_dict(sd, _model())
    assert jax.tree.structure(back) == jax.tree.structure(direct)
    assert jax.tree.all(jax.tree.map(
        lambda a, b: a.dtype == b.dtype and np.array_equal(a, b), back, direct))
    # an existing directory is never overwritten
    with pytest.raises(SystemExit) as exit_info:
        conv.main(args)
    assert exit_info.value.code == 2
    assert "already exists" in capsys.readouterr().err
