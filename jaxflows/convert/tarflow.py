"""Official apple/ml-tarflow PyTorch checkpoints -> jaxflows TarFlow params, without torch.

**Reading ``.pth``** (:func:`load_torch_state_dict`): ``torch.save`` (zip format, torch >= 1.6)
writes a zip archive ``PREFIX/data.pkl`` (a protocol-2 pickle of the state dict),
``PREFIX/data/KEY`` (raw little-endian storage bytes), ``PREFIX/version`` and
``PREFIX/byteorder``. Tensors are pickled as ``torch._utils._rebuild_tensor_v2(storage, offset,
size, stride, ...)`` with the storage as a persistent id ``('storage', torch.FloatStorage, KEY,
location, numel)``. We unpickle with a restricted ``Unpickler`` that only resolves those globals
(plus ``collections.OrderedDict`` and ``_rebuild_parameter``) and maps storages to NumPy arrays,
so ``torch`` is not needed and no arbitrary code runs. :func:`save_torch_state_dict` writes the
same format (used by the tests; ``torch.load`` reads it).

**Key map** (official ``Model`` -> our :class:`jaxflows.models.tarflow.TarFlowModel`; ``t`` block,
``k`` layer; ``W.T`` = transpose of a PyTorch ``[out, in]`` weight):

=================================================  ==========================================
``blocks.t.proj_in.weight [C, D]``                 ``blocks_t/proj_in_kernel [D, C]`` (``W.T``,
                                                   rows re-ordered to our patch layout)
``blocks.t.proj_in.bias``, ``blocks.t.pos_embed``  ``proj_in_bias``, ``pos_embed [N, C]``
``blocks.t.class_embed [K, 1, C]``                 ``class_embed [K, C]``
``blocks.t.attn_blocks.k.attention.norm.*``        ``transformer/layers/layer/attn_norm_*[k]``
``...attention.qkv.weight [3C, C]`` / ``.bias``    ``qkv_kernel [k, C, 3, H, Dh]`` / ``qkv_bias``
``...attention.proj.weight [C, C]`` / ``.bias``    ``proj_kernel [k, H, Dh, C]`` / ``proj_bias``
``...mlp.norm.*``                                  ``mlp_norm_*``
``...mlp.main.0.*`` / ``...mlp.main.2.*``          ``fc1_*`` / ``fc2_*``
``blocks.t.proj_out.weight [2D, C]`` / ``.bias``   ``proj_out_kernel [C, 2D]`` (``W.T``; the ``a``
                                                   and ``b`` halves each re-ordered)
``blocks.t.attn_mask [N, N]``                      (buffer, checked and dropped)
``var [N, D]``                                     VP: ``prior_logvar = log var``; NVP: dropped
=================================================  ==========================================

Patch layout: the official patch vector is channel-major ``(c, ph, pw)`` (``F.unfold``), ours
``(ph, pw, c)``; see :mod:`jaxflows.nn.patches`. Token order, qkv layout ``[3, heads, head_dim]``,
LayerNorm eps 1e-5 and exact GELU all match, so converted params reproduce the official forward.

**Converting the released AFHQ-256 checkpoint** (8-768-8-8, 3 classes, sigma 0.07)::

    # 1. download (on a machine with internet; 1.9 GB)
    wget https://ml-site.cdn-apple.com/models/tarflow/afhq256/afhq_model_8_768_8_8_0.07.pth
    # 2. convert to an Orbax params checkpoint (checks every key and shape against the config)
    python -m jaxflows.convert.tarflow afhq_model_8_768_8_8_0.07.pth \\
        --config experiments/configs/tarflow_afhq256.py:cond --out afhq256_params
    # or step 2 plus a grid sampled straight from the converted params (guidance 1, denoised)
    python -m jaxflows.convert.tarflow afhq_model_8_768_8_8_0.07.pth \\
        --config experiments/configs/tarflow_afhq256.py:cond --out afhq256_params \\
        --sample afhq256_samples.png --num 16 --guidance 1.0 --denoise

``--out DIR`` (the default form) writes an Orbax checkpoint directory of ``{'params': params}``
(:func:`jaxflows.train.pretrained.save_params`; ``DIR`` must not exist yet), which a training run
loads with ``config.init_from = [{'path': DIR, 'source': 'params', 'target': ''}]`` (e.g. to
fine-tune the official weights). ``--out FILE.npz`` writes a flat ``.npz`` instead (keys
``blocks_0/proj_in_kernel``, ...; read it back with :func:`unflatten_params`). ``--config`` is
optional: without it the model shape is inferred from the state dict (:func:`infer_model_kwargs`,
``--image_channels 3``). Sampling a 256x256 model is slow on CPU (1024 sequential tokens x 8
blocks); use an accelerator.

A file that is not a ``torch.save`` state dict (not a zip, a zip without ``data.pkl``, corrupt
bytes) raises :class:`TorchCheckpointError` (a :class:`jaxflows.errors.UserError`) naming the file;
the command prints ``error: ...`` and exits with status 2. In Python::

    from jaxflows.convert.tarflow import load_torch_state_dict, convert_state_dict
    params = convert_state_dict(load_torch_state_dict(path), model)   # model: TarFlowModel
"""

from __future__ import annotations

import argparse
import collections
import io
import logging
import math
import os
import pickle
import struct
import sys
import zipfile
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

from jaxflows.convert._cli import run_cli, write_params
from jaxflows.errors import UserError
from jaxflows.nn.patches import official_to_ours

log = logging.getLogger(__name__)


class TorchCheckpointError(UserError, ValueError):
    """A file that is not a ``torch.save``'d state dict; the one-line message names the file."""


class TorchPickleError(TorchCheckpointError, pickle.UnpicklingError):
    """A torch checkpoint whose pickle is corrupt or needs more than a state dict's globals."""

# ------------------------------------------------------------------------------------------
# torch zip format, read

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    del requires_grad, backward_hooks, metadata
    size, stride = tuple(size), tuple(stride)
    if not size:
        return np.array(storage[storage_offset])
    needed = storage_offset + 1 + sum((s - 1) * st for s, st in zip(size, stride))
    if min(size) > 0 and needed > storage.size:
        raise ValueError(f"tensor of size {size} and stride {stride} overruns its storage "
                         f"({storage.size} elements)")
    item = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:], shape=size, strides=tuple(s * item for s in stride))
    return np.array(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *args):
    del requires_grad, backward_hooks, args
    return data


class _TorchUnpickler(pickle.Unpickler):
    """Resolves only the globals a state dict needs; storages come from the zip."""

    def __init__(self, file, zf: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self._zf, self._prefix = zf, prefix
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(
            f"checkpoint references {module}.{name}, which a state dict should not need")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        _, stype, key, _location, numel = pid[:5]
        if not isinstance(stype, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {stype!r}")
        dtype = stype.dtype
        key = str(key)
        if key not in self._storages:
            raw = self._zf.read(f"{self._prefix}data/{key}")
            arr = np.frombuffer(raw, dtype=dtype.newbyteorder("<"))
            if arr.size < numel:
                raise pickle.UnpicklingError(f"storage {key}: {arr.size} < {numel} elements")
            self._storages[key] = arr.astype(dtype, copy=False)
        return self._storages[key]


def _file_name(path_or_file) -> str:
    if isinstance(path_or_file, (str, os.PathLike)):
        return os.fspath(path_or_file)
    name = getattr(path_or_file, "name", None)
    return str(name) if isinstance(name, (str, os.PathLike)) else "<file object>"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__


def load_torch_state_dict(path_or_file) -> dict[str, np.ndarray]:
    """Reads a ``torch.save``'d state dict (zip format) into ``{key: np.ndarray}``.

    Accepts a path or a binary file object. A checkpoint that wraps the state dict
    (``{'model': sd}`` / ``{'state_dict': sd}``) is unwrapped. Raises
    :class:`TorchCheckpointError` (a ``UserError`` and ``ValueError``) naming the file when it
    is missing, not a zip (e.g. the legacy format), a zip without one ``data.pkl``, big-endian,
    corrupt, or holds no state dict; :class:`TorchPickleError` (also a
    ``pickle.UnpicklingError``) when the pickle is corrupt or references other globals.
    """
    name = _file_name(path_or_file)
    if isinstance(path_or_file, (str, os.PathLike)) and not os.path.isfile(path_or_file):
        what = "is a directory" if os.path.isdir(path_or_file) else "does not exist"
        raise TorchCheckpointError(f"{name} {what}, not a torch checkpoint file")
    if not zipfile.is_zipfile(path_or_file):
        raise TorchCheckpointError(f"{name} is not a zip-format torch checkpoint "
                                   "(re-save it with torch >= 1.6 or `torch.save(sd, f)`)")
    try:
        with zipfile.ZipFile(path_or_file) as zf:
            pkls = [n for n in zf.namelist() if n.endswith("data.pkl")]
            if len(pkls) != 1:
                found = f"found {len(pkls)}" if pkls else "found none"
                raise TorchCheckpointError(f"{name} is a zip but not a torch checkpoint: "
                                           f"expected one data.pkl, {found}")
            prefix = pkls[0][: -len("data.pkl")]
            order = zf.read(prefix + "byteorder").decode().strip() if (
                prefix + "byteorder") in zf.namelist() else "little"
            if order != "little":
                raise TorchCheckpointError(f"{name}: big-endian checkpoints are not supported "
                                           f"(byteorder={order})")
            obj = _TorchUnpickler(io.BytesIO(zf.read(pkls[0])), zf, prefix).load()
    except TorchCheckpointError:
        raise
    except pickle.UnpicklingError as e:
        raise TorchPickleError(f"{name}: {str(e).splitlines()[0] if str(e) else e!r}") from None
    except Exception as e:  # noqa: BLE001  (any failure to read it: a corrupt file)
        raise TorchCheckpointError(f"{name} is a corrupt torch checkpoint "
                                   f"({_first_line(e)})") from None
    for wrap in ("state_dict", "model"):
        if isinstance(obj, Mapping) and wrap in obj and isinstance(obj[wrap], Mapping):
            obj = obj[wrap]
    if not isinstance(obj, Mapping):
        raise TorchCheckpointError(f"{name} holds a {type(obj).__name__}, not a state dict")
    return {str(k): np.asarray(v) for k, v in obj.items()}


# ------------------------------------------------------------------------------------------
# torch zip format, write (a minimal protocol-2 pickle, as torch.save emits it)

_DTYPE_STORAGE = {np.dtype(v): k for k, v in _STORAGE_DTYPES.items()}


class _PickleWriter:
    def __init__(self):
        self.out = bytearray(b"\x80\x02")  # PROTO 2

    def global_(self, module: str, name: str):
        self.out += b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    def str_(self, s: str):
        b = s.encode("utf-8")
        self.out += b"X" + struct.pack("<I", len(b)) + b

    def int_(self, i: int):
        if 0 <= i < 256:
            self.out += b"K" + struct.pack("<B", i)
        elif -(2**31) <= i < 2**31:
            self.out += b"J" + struct.pack("<i", i)
        else:
            enc = i.to_bytes((i.bit_length() + 8) // 8, "little", signed=True)
            self.out += b"\x8a" + struct.pack("<B", len(enc)) + enc

    def tuple_(self, items):
        self.out += b"("
        for it in items:
            self.int_(it)
        self.out += b"t"

    def ordered_dict(self):
        self.global_("collections", "OrderedDict")
        self.out += b")R"  # EMPTY_TUPLE, REDUCE


def save_torch_state_dict(path_or_file, state_dict: Mapping[str, np.ndarray],
                          archive_name: str = "archive") -> None:
    """Writes ``{key: array}`` in ``torch.save``'s zip format (readable by ``torch.load`` and
    :func:`load_torch_state_dict`). Arrays are stored contiguous, one storage each."""
    w = _PickleWriter()
    w.ordered_dict()
    w.out += b"("  # MARK for SETITEMS
    blobs = []
    for i, (key, value) in enumerate(state_dict.items()):
        arr = np.array(value, order="C", copy=True)  # (ascontiguousarray makes 0-d 1-d)
        if arr.dtype not in _DTYPE_STORAGE:
            raise ValueError(f"{key}: dtype {arr.dtype} has no torch storage type")
        w.str_(key)
        w.global_("torch._utils", "_rebuild_tensor_v2")
        w.out += b"("  # args
        w.out += b"("  # persistent id tuple
        w.str_("storage")
        w.global_("torch", _DTYPE_STORAGE[arr.dtype])
        w.str_(str(i))
        w.str_("cpu")
        w.int_(arr.size)
        w.out += b"tQ"  # TUPLE, BINPERSID
        w.int_(0)
        w.tuple_(arr.shape)
        strides = [s // arr.itemsize for s in arr.strides] if arr.ndim else []
        w.tuple_(strides)
        w.out += b"\x89"  # NEWFALSE (requires_grad)
        w.ordered_dict()  # backward hooks
        w.out += b"tR"  # TUPLE, REDUCE
        blobs.append((str(i), arr.astype(arr.dtype.newbyteorder("<")).tobytes()))
    w.out += b"u."  # SETITEMS, STOP
    with zipfile.ZipFile(path_or_file, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{archive_name}/data.pkl", bytes(w.out))
        zf.writestr(f"{archive_name}/byteorder", "little")
        for key, raw in blobs:
            zf.writestr(f"{archive_name}/data/{key}", raw)
        zf.writestr(f"{archive_name}/version", "3\n")


# ------------------------------------------------------------------------------------------
# key map


def infer_model_kwargs(state_dict: Mapping[str, np.ndarray], image_channels: int = 3
                       ) -> dict[str, Any]:
    """Model shape from an official state dict: ``image_shape, patch_size, width, num_blocks,
    layers_per_block, num_classes, nvp`` (square images). ``head_dim`` cannot be inferred; it
    is 64 in every ml-tarflow model."""
    w_in = state_dict["blocks.0.proj_in.weight"]
    width, d = w_in.shape
    p = int(round(math.sqrt(d / image_channels)))
    if p * p * image_channels != d:
        raise ValueError(f"proj_in has {d} inputs, not p*p*{image_channels} for any p")
    n = state_dict["blocks.0.pos_embed"].shape[0]
    side = int(round(math.sqrt(n)))
    blocks = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
    layers = 1 + max(int(k.split(".")[3]) for k in state_dict
                     if k.startswith("blocks.0.attn_blocks."))
    ce = state_dict.get("blocks.0.class_embed")
    out = state_dict["blocks.0.proj_out.weight"].shape[0]
    return dict(image_shape=(side * p, side * p, image_channels), patch_size=p, width=width,
                num_blocks=blocks, layers_per_block=layers,
                num_classes=0 if ce is None else int(ce.shape[0]), nvp=out == 2 * d)


def convert_state_dict(state_dict: Mapping[str, np.ndarray], model) -> dict[str, Any]:
    """Maps an official state dict onto the (unboxed) params tree of ``model``
    (a :class:`jaxflows.models.tarflow.TarFlowModel`); returns float32 NumPy arrays.

    Raises ``ValueError`` naming the key and both shapes when a tensor does not fit the model,
    and listing missing / unexpected keys.
    """
    state_dict = {k.removeprefix("module.").removeprefix("_orig_mod."): v
                  for k, v in state_dict.items()}  # DDP / torch.compile wrappers
    h, w, c_img = model.image_shape
    p, width, hd = model.patch_size, model.width, model.head_dim
    n, d = model.num_tokens, model.token_dim
    if width % hd:
        raise ValueError(f"model width {width} is not a multiple of head_dim {hd}")
    heads = width // hd
    hid = model.mlp_ratio * width
    kk = model.layers_per_block
    idx = official_to_ours(p, c_img)
    out_dim = 2 * d if model.nvp else d
    used: set[str] = set()

    def get(key: str, shape: tuple[int, ...]) -> np.ndarray:
        if key not in state_dict:
            raise ValueError(f"state dict lacks {key!r} (expected shape {shape})")
        arr = np.asarray(state_dict[key])
        if tuple(arr.shape) != tuple(shape):
            raise ValueError(f"state dict {key!r} has shape {tuple(arr.shape)} but the model "
                             f"needs {tuple(shape)}")
        used.add(key)
        return arr.astype(np.float32)

    def reorder_out(x: np.ndarray) -> np.ndarray:  # last axis: [a | b] or [b], official order
        parts = np.split(x, out_dim // d, axis=-1)
        return np.concatenate([q[..., idx] for q in parts], axis=-1)

    params: dict[str, Any] = {}
    for t in range(model.num_blocks):
        pre = f"blocks.{t}."
        blk: dict[str, Any] = {}
        blk["proj_in_kernel"] = get(pre + "proj_in.weight", (width, d)).T[idx]
        blk["proj_in_bias"] = get(pre + "proj_in.bias", (width,))
        blk["pos_embed"] = get(pre + "pos_embed", (n, width))
        if model.num_classes:
            blk["class_embed"] = get(pre + "class_embed", (model.num_classes, 1, width))[:, 0]
        blk["proj_out_kernel"] = reorder_out(get(pre + "proj_out.weight", (out_dim, width)).T)
        blk["proj_out_bias"] = reorder_out(get(pre + "proj_out.bias", (out_dim,)))
        if pre + "attn_mask" in state_dict:
            get(pre + "attn_mask", (n, n))
        layers: dict[str, list[np.ndarray]] = collections.defaultdict(list)
        for k in range(kk):
            lp = f"{pre}attn_blocks.{k}."
            at, ml = lp + "attention.", lp + "mlp."
            layers["attn_norm_scale"].append(get(at + "norm.weight", (width,)))
            layers["attn_norm_bias"].append(get(at + "norm.bias", (width,)))
            layers["qkv_kernel"].append(
                get(at + "qkv.weight", (3 * width, width)).T.reshape(width, 3, heads, hd))
            layers["qkv_bias"].append(get(at + "qkv.bias", (3 * width,)).reshape(3, heads, hd))
            layers["proj_kernel"].append(
                get(at + "proj.weight", (width, width)).T.reshape(heads, hd, width))
            layers["proj_bias"].append(get(at + "proj.bias", (width,)))
            layers["mlp_norm_scale"].append(get(ml + "norm.weight", (width,)))
            layers["mlp_norm_bias"].append(get(ml + "norm.bias", (width,)))
            layers["fc1_kernel"].append(get(ml + "main.0.weight", (hid, width)).T)
            layers["fc1_bias"].append(get(ml + "main.0.bias", (hid,)))
            layers["fc2_kernel"].append(get(ml + "main.2.weight", (width, hid)).T)
            layers["fc2_bias"].append(get(ml + "main.2.bias", (width,)))
        blk["transformer"] = {"layers": {"layer": {k: np.stack(v) for k, v in layers.items()}}}
        params[f"blocks_{t}"] = blk
    if "var" in state_dict:
        var = get("var", (n, d))
        if model.nvp:
            if not np.allclose(var, 1.0):
                log.warning("NVP checkpoint has a prior variance != 1; it is ignored")
        else:
            params["prior_logvar"] = np.log(var[:, idx])
    elif not model.nvp:
        raise ValueError("state dict lacks 'var' (the VP prior variance)")
    extra = sorted(set(state_dict) - used)
    if extra:
        raise ValueError(f"state dict has keys the model does not use: {extra[:5]}"
                         f"{' ...' if len(extra) > 5 else ''} (num_blocks/layers/classes?)")
    return params


def check_against(params: Mapping, reference: Mapping, path: str = "") -> None:
    """Raises ``ValueError`` unless ``params`` has exactly ``reference``'s keys and shapes."""
    if set(params) != set(reference):
        raise ValueError(f"params at {path or '/'}: keys {sorted(set(params) ^ set(reference))} "
                         "differ from the model's")
    for k, v in reference.items():
        if isinstance(v, Mapping):
            check_against(params[k], v, f"{path}/{k}")
        elif tuple(np.shape(params[k])) != tuple(v.shape):
            raise ValueError(f"param {path}/{k} has shape {np.shape(params[k])}, model needs "
                             f"{tuple(v.shape)}")


def flatten_params(params: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
    """``{'a': {'b': x}} -> {'a/b': x}`` (for ``np.savez``)."""
    out = {}
    for k, v in params.items():
        if isinstance(v, Mapping):
            out.update(flatten_params(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = np.asarray(v)
    return out


def unflatten_params(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Inverse of :func:`flatten_params`."""
    out: dict[str, Any] = {}
    for key, v in flat.items():
        node = out
        *path, leaf = key.split("/")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = np.asarray(v)
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI: convert an official checkpoint to an Orbax params checkpoint (or ``.npz``) and
    optionally sample a grid. A :class:`jaxflows.errors.UserError` prints ``error: ...`` on
    stderr and exits with status 2."""
    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> None:
    import jax
    import jax.numpy as jnp
    import ml_collections

    from jaxflows.models.tarflow import TarFlowModel
    from jaxflows.models.tarflow_config import TASK_MODULE, model_from_config
    from jaxflows.models.tarflow_task import TarFlowTask
    from jaxflows.train.task import DataInfo

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--config", default="", help="experiments/configs/NAME.py:ROW")
    ap.add_argument("--image_channels", type=int, default=3)
    ap.add_argument("--head_dim", type=int, default=64, help="without --config (64 upstream)")
    ap.add_argument("--noise_std", type=float, default=None,
                    help="training noise for --denoise without --config (default: parsed from "
                         "the official file name, e.g. ..._0.07.pth)")
    ap.add_argument("--out", required=True,
                    help="new directory for an Orbax params checkpoint (loadable with "
                         "config.init_from), or FILE.npz for flattened params")
    ap.add_argument("--sample", default="", help="write a PNG grid of samples here")
    ap.add_argument("--num", type=int, default=16)
    ap.add_argument("--guidance", type=float, default=0.0)
    ap.add_argument("--class_label", type=int, default=None)
    ap.add_argument("--denoise", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)

    to_npz = args.out.endswith(".npz")
    if not to_npz and os.path.exists(args.out):  # before the (long) conversion
        raise UserError(f"--out {args.out} already exists",
                        hint="choose a new directory for the Orbax checkpoint")
    sd = load_torch_state_dict(args.checkpoint)
    try:
        inferred = infer_model_kwargs(sd, args.image_channels)
    except (KeyError, ValueError, IndexError) as e:
        raise UserError(f"{args.checkpoint} is not an ml-tarflow state dict "
                        f"({_first_line(e)})") from None
    if args.config:
        from jaxflows.train.config_loader import load_config

        config = load_config(args.config)
        model = model_from_config(config, inferred["image_shape"])
    else:
        noise = args.noise_std
        if noise is None:
            stem = os.path.basename(str(args.checkpoint)).rsplit(".pth", 1)[0]
            try:
                noise = float(stem.rsplit("_", 1)[-1])
            except ValueError:
                noise = 0.0
        config = ml_collections.ConfigDict({"dtype": "float32", "model": {
            "name": TASK_MODULE, "patch_size": inferred["patch_size"],
            "channels": inferred["width"], "num_blocks": inferred["num_blocks"],
            "layers_per_block": inferred["layers_per_block"], "head_dim": args.head_dim,
            "num_classes": inferred["num_classes"], "nvp": inferred["nvp"],
            "noise_type": "gaussian", "noise_std": noise}})
        model = TarFlowModel(head_dim=args.head_dim, **inferred)
    try:
        params = convert_state_dict(sd, model)
    except ValueError as e:
        raise UserError(f"{args.checkpoint} does not fit the model: {_first_line(e)}",
                        hint="check --config, or --image_channels / --head_dim") from None
    write_params(args.out, params, to_npz=to_npz, target="")
    if args.sample:
        info = DataInfo.for_images(inferred["image_shape"], inferred["num_classes"], 0)
        task = TarFlowTask(config, info)
        imgs = task.sample(jax.tree.map(jnp.asarray, params), jax.random.key(args.seed),
                           args.num, guidance=args.guidance, class_label=args.class_label,
                           denoise=args.denoise)
        print(f"wrote {task.write_samples(imgs, args.sample)}")


if __name__ == "__main__":
    sys.exit(main())
