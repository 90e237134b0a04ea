"""Images <-> sequences of patch tokens, and the map to the official TarFlow patch layout.

``patchify`` cuts an NHWC image ``[B, H, W, C]`` into ``N = (H/p)(W/p)`` non-overlapping
``p x p`` patches, in raster order (patch row major, then patch column), each flattened to a
vector of ``D = p*p*C`` numbers.

**Within-patch ordering (ours):** ``(ph, pw, c)``, channel fastest, i.e. element
``index = (ph * p + pw) * C + c``. This is what a reshape of an NHWC array gives for free.

**Official ordering (apple/ml-tarflow):** ``F.unfold`` on an NCHW image gives channel-major
``(c, ph, pw)``, i.e. ``index = c * p * p + ph * p + pw``. The token (patch) order is the same
raster order in both. :func:`official_to_ours` / :func:`ours_to_official` give the index
permutations used by the checkpoint converter (:mod:`jaxflows.convert.tarflow`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def check_patch_size(height: int, width: int, patch_size: int) -> None:
    """Raises ``ValueError`` naming both sizes unless ``patch_size`` divides ``height, width``."""
    if patch_size <= 0:
        raise ValueError(f"patch size must be positive, got {patch_size}")
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"image size {height}x{width} is not divisible by the patch size {patch_size}"
        )


def num_patches(height: int, width: int, patch_size: int) -> int:
    """Number of tokens ``N = (H/p) * (W/p)`` (after checking divisibility)."""
    check_patch_size(height, width, patch_size)
    return (height // patch_size) * (width // patch_size)


def patchify(x: jax.Array, patch_size: int) -> jax.Array:
    """``x: [B, H, W, C] -> [B, N, p*p*C]`` with raster token order and ``(ph, pw, c)`` inside."""
    b, h, w, c = x.shape
    p = patch_size
    check_patch_size(h, w, p)
    x = x.reshape(b, h // p, p, w // p, p, c)
    x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))  # [B, H/p, W/p, p, p, C]
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: jax.Array, patch_size: int, image_shape: tuple[int, int, int]) -> jax.Array:
    """Inverse of :func:`patchify`: ``tokens: [B, N, p*p*C] -> [B, H, W, C]``."""
    h, w, c = image_shape
    p = patch_size
    check_patch_size(h, w, p)
    b, n, d = tokens.shape
    if n != (h // p) * (w // p) or d != p * p * c:
        raise ValueError(
            f"tokens of shape {tokens.shape[1:]} do not fit image {image_shape} with patch {p}"
        )
    x = tokens.reshape(b, h // p, w // p, p, p, c)
    x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))
    return x.reshape(b, h, w, c)


def official_to_ours(patch_size: int, channels: int) -> np.ndarray:
    """Index array ``idx`` with ``ours[..., j] = official[..., idx[j]]`` (length ``p*p*C``).

    ``official`` is a patch vector in ml-tarflow's ``(c, ph, pw)`` order, ``ours`` in ``(ph, pw,
    c)`` order.
    """
    p, c = patch_size, channels
    ph, pw, cc = np.meshgrid(np.arange(p), np.arange(p), np.arange(c), indexing="ij")
    return (cc * p * p + ph * p + pw).reshape(-1)


def ours_to_official(patch_size: int, channels: int) -> np.ndarray:
    """Index array ``idx`` with ``official[..., i] = ours[..., idx[i]]`` (inverse permutation)."""
    return np.argsort(official_to_ours(patch_size, channels))
