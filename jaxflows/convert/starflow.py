"""Official apple/ml-starflow PyTorch checkpoints -> jaxflows STARFlow params, without torch.

The ``.pth`` file is read with the torch-free reader of :mod:`jaxflows.convert.tarflow`
(:func:`~jaxflows.convert.tarflow.load_torch_state_dict`; ``module.`` / ``_orig_mod.`` prefixes
of DDP / ``torch.compile`` wrappers are stripped). :func:`official_to_params` maps it onto the
params of a :class:`jaxflows.models.starflow.StarFlowModel` (the ``flow`` subtree of
:class:`jaxflows.models.starflow_task.StarFlowTask`) and checks every shape.

**Key map** (official ``Model`` -> ours; ``t`` block in the data -> noise order, the deep block
last; ``k`` layer; ``W.T`` = transpose of a PyTorch ``[out, in]`` weight):

=================================================  =============================================
``blocks.t.sos_embed [1, 1, D]``                   ``blocks_t/sos_embed``
``blocks.t.proj_in.weight [C, D]`` / ``.bias``     ``proj_in_kernel [D, C]`` (``W.T``) / ``_bias``
``blocks.t.proj_txt.weight [C, E]`` / ``.bias``    ``proj_txt_kernel [E, C]`` / ``_bias`` (deep)
``blocks.t.final_norm.weight [C]``                 ``final_norm_scale``
``blocks.t.proj_out.weight [2D, C]`` / ``.bias``   ``proj_out_kernel [C, 2D]`` / ``_bias``
``blocks.t.pos_embed [N, C]`` (learned positions)  ``pos_embed``
``...attn_blocks.k.attention.norm.*``              ``transformer/layers/layer/attn_norm_*[k]``
``...attention.qkv.weight [3C, C]`` / ``.bias``    ``qkv_kernel [k, C, 3, H, Dh]`` / ``qkv_bias``
``...attention.proj.weight [C, C]`` / ``.bias``    ``proj_kernel [k, H, Dh, C]`` / ``proj_bias``
``...mlp.norm.*``, ``mlp.main.0.*``, ``main.2.*``  ``mlp_norm_*``, ``fc1_*``, ``fc2_*``
=================================================  =============================================

Patch vectors are ``(ph, pw, c)`` in both (official ``patchify``), so nothing is re-ordered.
**Buffers** are checked and dropped: ``var [N, D]`` (the prior variance, 1 in the NVP flows; a
warning otherwise), ``blocks.t.attn_mask`` (``L x L`` or flat, ``L = N`` or ``N + T``) and the
RoPE tables ``...freqs_cos`` / ``...freqs_sin`` (``[L, head_dim]``). Any other key is an error
naming it, unless it matches an ``ignore`` regex.

A class-conditional model reads its labels through the same ``proj_txt`` (a one-hot prefix of
``K + 1`` features), so the ImageNet model converts like the text model.

**Command line** (mirrors :mod:`jaxflows.convert.tarflow`)::

    python -m jaxflows.convert.starflow starflow_3B_t2i.pth \\
        --config experiments/configs/starflow_t2i256.py:t2i --out t2i_params

writes an Orbax checkpoint of ``{'params': flow params}``
(:func:`jaxflows.train.pretrained.save_params`; ``--out FILE.npz`` writes a flat ``.npz``) that a
run loads with ``config.init_from = [{'path': DIR, 'source': 'params', 'target': 'flow'}]``.
Without ``--config`` the shape is inferred from the state dict (:func:`infer_model_kwargs`;
``--head_dim``, ``--num_classes`` cannot be inferred). Sampling needs the VAE decoder, which is
not part of this library, so there is no ``--sample``. A checkpoint that does not fit prints one
``error: ...`` line naming the key and exits with status 2.
"""

from __future__ import annotations

import argparse
import collections
import logging
import math
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxflows.convert._cli import run_cli, write_params
from jaxflows.convert.tarflow import (
    _first_line,
    load_torch_state_dict,
)
from jaxflows.errors import UserError

log = logging.getLogger(__name__)

#: block-level parameters: ours -> the official module name
_BLOCK_LINEAR = {"proj_in": "proj_in", "proj_out": "proj_out", "proj_txt": "proj_txt"}
#: buffers of the official model (checked, then dropped)
_ROPE_SUFFIXES = ("freqs_cos", "freqs_sin")


def strip_wrappers(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Keys without DDP / ``torch.compile`` prefixes, values as NumPy arrays."""
    return {k.removeprefix("module.").removeprefix("_orig_mod."): np.asarray(v)
            for k, v in state_dict.items()}


def official_to_params(state_dict: Mapping[str, Any], model, *,
                       ignore: Sequence[str] = ()) -> dict[str, Any]:
    """An official STARFlow state dict -> the (unboxed) params of ``model`` (a
    :class:`jaxflows.models.starflow.StarFlowModel`), float32 NumPy arrays.

    Raises ``ValueError`` naming the key: a missing key (and the shape it should have), a tensor
    of the wrong shape (both shapes), a buffer of the wrong shape, or keys the model does not use
    (unless they match a regex of ``ignore``).
    """
    from jaxflows.models.starflow import init_shapes

    sd = strip_wrappers(state_dict)
    ref = init_shapes(model)
    c, hd = model.width, model.head_dim
    heads = c // hd
    n, d = model.num_tokens, model.token_dim
    t_len, _ = model.cond_shape
    used: set[str] = set()

    def get(key: str, shape: tuple[int, ...]) -> np.ndarray:
        if key not in sd:
            raise ValueError(f"state dict lacks {key!r} (expected shape {tuple(shape)})")
        arr = sd[key]
        if tuple(arr.shape) != tuple(shape):
            raise ValueError(f"state dict {key!r} has shape {tuple(arr.shape)} but the model "
                             f"needs {tuple(shape)}")
        used.add(key)
        return np.asarray(arr, np.float32)

    params: dict[str, Any] = {}
    for t, num_layers in enumerate(model.layers_per_block):
        pre = f"blocks.{t}."
        r = ref[f"blocks_{t}"]
        blk: dict[str, Any] = {}
        for name, leaf in r.items():
            if name == "transformer":
                continue
            shape = tuple(leaf.shape)
            base, _, kind = name.rpartition("_")
            if base in _BLOCK_LINEAR and kind == "kernel":
                blk[name] = get(f"{pre}{_BLOCK_LINEAR[base]}.weight", shape[::-1]).T
            elif base in _BLOCK_LINEAR and kind == "bias":
                blk[name] = get(f"{pre}{_BLOCK_LINEAR[base]}.bias", shape)
            elif name == "final_norm_scale":
                blk[name] = get(f"{pre}final_norm.weight", shape)
            elif name in ("sos_embed", "pos_embed"):
                blk[name] = get(pre + name, shape)
            else:
                raise ValueError(f"no official key is known for our parameter blocks_{t}/{name}")
        layers: dict[str, list[np.ndarray]] = collections.defaultdict(list)
        hid = model.mlp_ratio * c
        for k in range(num_layers):
            at, ml = f"{pre}attn_blocks.{k}.attention.", f"{pre}attn_blocks.{k}.mlp."
            layers["attn_norm_scale"].append(get(at + "norm.weight", (c,)))
            layers["attn_norm_bias"].append(get(at + "norm.bias", (c,)))
            layers["qkv_kernel"].append(get(at + "qkv.weight", (3 * c, c))
                                        .reshape(3, heads, hd, c).transpose(3, 0, 1, 2))
            layers["qkv_bias"].append(get(at + "qkv.bias", (3 * c,)).reshape(3, heads, hd))
            layers["proj_kernel"].append(get(at + "proj.weight", (c, c)).T.reshape(heads, hd, c))
            layers["proj_bias"].append(get(at + "proj.bias", (c,)))
            layers["mlp_norm_scale"].append(get(ml + "norm.weight", (c,)))
            layers["mlp_norm_bias"].append(get(ml + "norm.bias", (c,)))
            layers["fc1_kernel"].append(get(ml + "main.0.weight", (hid, c)).T)
            layers["fc1_bias"].append(get(ml + "main.0.bias", (hid,)))
            layers["fc2_kernel"].append(get(ml + "main.2.weight", (c, hid)).T)
            layers["fc2_bias"].append(get(ml + "main.2.bias", (c,)))
        stacked = {k: np.stack(v) for k, v in layers.items()}
        want = r["transformer"]["layers"]["layer"]
        if set(stacked) != set(want):
            raise ValueError(f"blocks_{t}: the model's layer params {sorted(want)} are not the "
                             f"official layout {sorted(stacked)}")
        for k, v in stacked.items():
            if v.shape != tuple(want[k].shape):
                raise ValueError(f"blocks_{t}/{k}: converted shape {v.shape}, model "
                                 f"{tuple(want[k].shape)}")
        blk["transformer"] = {"layers": {"layer": stacked}}
        params[f"blocks_{t}"] = blk

    # buffers: check and drop
    lengths = {n, n + t_len}
    if "var" in sd:
        var = get("var", (n, d))
        if not np.allclose(var, 1.0):
            log.warning("the checkpoint's prior variance 'var' is not 1; it is ignored (the "
                        "flow's prior is N(0, I))")
    for t in range(model.num_blocks):
        key = f"blocks.{t}.attn_mask"
        if key in sd:
            size = int(np.prod(sd[key].shape))
            if sd[key].ndim > 2 or not any(size == length * length for length in lengths):
                raise ValueError(f"buffer {key!r} has shape {tuple(sd[key].shape)}; expected "
                                 f"L x L with L in {sorted(lengths)}")
            used.add(key)
    for key, arr in sd.items():
        if key.endswith(_ROPE_SUFFIXES):
            if arr.ndim != 2 or arr.shape[1] != hd or arr.shape[0] not in lengths:
                raise ValueError(f"buffer {key!r} has shape {tuple(arr.shape)}; expected "
                                 f"[L, {hd}] with L in {sorted(lengths)}")
            used.add(key)
    patterns = [re.compile(p) for p in ignore]
    extra = sorted(k for k in set(sd) - used if not any(p.fullmatch(k) for p in patterns))
    if extra:
        raise ValueError(f"state dict has keys the model does not use: {extra[:5]}"
                         f"{' ...' if len(extra) > 5 else ''} (layers_per_block / classes / "
                         "text dims? --ignore drops keys on purpose)")
    return params


def infer_model_kwargs(state_dict: Mapping[str, Any], head_dim: int = 64,
                       num_classes: int = 0) -> dict[str, Any]:
    """:class:`StarFlowModel` arguments from an official state dict: ``input_shape`` (a square
    latent grid, patch 1; ``N`` from ``var`` or an ``attn_mask``), ``width``,
    ``layers_per_block``, the prefix (``proj_txt``: ``num_classes`` one-hot labels when given,
    else ``prefix_len`` from the deep block's ``attn_mask`` and ``prefix_dim``) and the options
    whose parameters are present (SOS, final norm, learned positions). ``head_dim`` and
    ``num_classes`` cannot be inferred."""
    sd = strip_wrappers(state_dict)
    if "blocks.0.proj_in.weight" not in sd:
        raise ValueError("no 'blocks.0.proj_in.weight': not an ml-starflow state dict")
    width, d = sd["blocks.0.proj_in.weight"].shape
    blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    layers = []
    for t in range(blocks):
        ks = [int(k.split(".")[3]) for k in sd if k.startswith(f"blocks.{t}.attn_blocks.")]
        if not ks:
            raise ValueError(f"block {t} has no attn_blocks")
        layers.append(1 + max(ks))
    deep = f"blocks.{blocks - 1}."
    n = None
    if "var" in sd:
        n = int(sd["var"].shape[0])
    elif "blocks.0.attn_mask" in sd:
        n = int(round(math.sqrt(np.prod(sd["blocks.0.attn_mask"].shape))))
    if n is None:
        raise ValueError("cannot infer the number of tokens (no 'var' or attn_mask buffer); "
                         "pass --config")
    side = int(round(math.sqrt(n)))
    if side * side != n:
        raise ValueError(f"{n} tokens are not a square grid; pass --config")
    kwargs: dict[str, Any] = dict(input_shape=(side, side, int(d)), width=int(width),
                                  layers_per_block=tuple(layers), head_dim=int(head_dim))
    if deep + "proj_txt.weight" in sd:
        e = int(sd[deep + "proj_txt.weight"].shape[1])
        if num_classes:
            if e != num_classes + 1:
                raise ValueError(f"proj_txt takes {e} features, not num_classes + 1 = "
                                 f"{num_classes + 1}")
            kwargs["num_classes"] = int(num_classes)
        else:
            mask = sd.get(deep + "attn_mask")
            if mask is None:
                raise ValueError("cannot infer the text length (no attn_mask in the deep "
                                 "block); pass --config or --num_classes")
            length = int(round(math.sqrt(np.prod(mask.shape))))
            kwargs.update(prefix_len=length - n, prefix_dim=e)
    if "blocks.0.sos_embed" not in sd:
        kwargs["shift"] = "output"
    if "blocks.0.final_norm.weight" not in sd:
        kwargs["final_norm"] = False
    if "blocks.0.pos_embed" in sd:
        kwargs["positions"] = "learned"
    return kwargs


def model_from_experiment(spec: str):
    """The flow model of an experiment config ``FILE.py:ROW`` (its StarFlow task on the
    config's ``data.image_shape`` / ``num_classes``, or the prepared dataset's)."""
    from jaxflows.train.config_loader import load_config
    from jaxflows.train.info import _info_data
    from jaxflows.train.task import build_task

    config = load_config(spec)
    return build_task(config, _info_data(config)).model


def main(argv: list[str] | None = None) -> int:
    """CLI: convert an official checkpoint to an Orbax params checkpoint (or ``.npz``). A
    :class:`jaxflows.errors.UserError` prints ``error: ...`` on stderr and exits with 2."""
    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> None:
    import os

    from jaxflows.models.starflow import StarFlowModel

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--config", default="", help="experiments/configs/NAME.py:ROW")
    ap.add_argument("--head_dim", type=int, default=64, help="without --config (64 upstream)")
    ap.add_argument("--num_classes", type=int, default=0,
                    help="without --config: labels through a one-hot prefix of K+1 features")
    ap.add_argument("--ignore", action="append", default=[],
                    help="regex of state-dict keys to drop (repeatable)")
    ap.add_argument("--out", required=True,
                    help="new directory for an Orbax params checkpoint (loadable with "
                         "config.init_from, target 'flow'), or FILE.npz for flattened params")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)

    to_npz = args.out.endswith(".npz")
    if not to_npz and os.path.exists(args.out):
        raise UserError(f"--out {args.out} already exists",
                        hint="choose a new directory for the Orbax checkpoint")
    sd = load_torch_state_dict(args.checkpoint)
    if args.config:
        model = model_from_experiment(args.config)
    else:
        try:
            model = StarFlowModel(**infer_model_kwargs(sd, args.head_dim, args.num_classes))
        except (KeyError, ValueError, IndexError) as e:
            raise UserError(f"{args.checkpoint} is not an ml-starflow state dict we can read "
                            f"({_first_line(e)})") from None
    try:
        params = official_to_params(sd, model, ignore=args.ignore)
    except ValueError as e:
        raise UserError(f"{args.checkpoint} does not fit the model: {_first_line(e)}",
                        hint="check --config, or --head_dim / --num_classes") from None
    write_params(args.out, params, to_npz=to_npz, target="flow")


if __name__ == "__main__":
    sys.exit(main())
