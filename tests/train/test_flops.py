"""FLOP counting on jaxprs (jaxflows.train.flops): exact matmul/conv counts, loops counted times
their trip counts, agreement with XLA where XLA's count is right (no loops), and ``jaxflows info``
on a TarFlow with scanned layers."""


import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax import lax

from jaxflows.train.flops import step_flops

F32 = jnp.float32


def _s(*shape):
    return jax.ShapeDtypeStruct(shape, F32)


def _xla_flops(f, *args) -> float:
    cost = jax.jit(f).lower(*args).cost_analysis()
    return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])


def test_matmul_chain_is_exact():
    m, k, n, p = 5, 7, 11, 3
    out = step_flops(lambda x, a, b: jnp.einsum("mk,kn->mn", x, a) @ b, _s(m, k), _s(k, n),
                     _s(n, p))
    assert out["matmul_flops"] == out["flops"] == 2 * m * k * n + 2 * m * n * p
    assert out["transcendentals"] == 0 and out["uncounted_loops"] == 0
    # batched: batch dims count once, contracting once
    out = step_flops(lambda a, b: jnp.einsum("bmk,bkn->bmn", a, b), _s(4, m, k), _s(4, k, n))
    assert out["flops"] == 2 * 4 * m * k * n


def _body(c, w):
    return c @ w + 1.0


def test_scan_counts_body_times_length_like_unrolled():
    m, k, length = 4, 16, 7

    def scanned(c, w):
        return lax.scan(lambda c, _: (_body(c, w), None), c, None, length=length)[0]

    def unrolled(c, w):
        for _ in range(length):
            c = _body(c, w)
        return c

    args = (_s(m, k), _s(k, k))
    body = 2 * m * k * k + m * k
    out = step_flops(scanned, *args)
    assert out["flops"] == step_flops(unrolled, *args)["flops"] == length * body
    assert out["matmul_flops"] == length * 2 * m * k * k
    # what this module exists for: XLA counts the loop body once
    assert _xla_flops(scanned, *args) < 1.5 * body


def test_while_loops_with_static_and_unknown_trip_counts():
    k = 8

    def fori(x, w, n):
        return lax.fori_loop(0, n, lambda i, y: y @ w, x)

    body = 2 * k * k * k
    static = step_flops(lambda x, w: fori(x, w, jnp.int32(5) * 1), _s(k, k), _s(k, k))
    assert static["matmul_flops"] == 5 * body and static["uncounted_loops"] == 0
    dynamic = step_flops(fori, _s(k, k), _s(k, k), jax.ShapeDtypeStruct((), jnp.int32))
    assert dynamic["matmul_flops"] == body and dynamic["uncounted_loops"] == 1


def test_cond_takes_the_costlier_branch_and_transcendentals_are_separate():
    out = step_flops(lambda p, x: lax.cond(p, lambda x: jnp.exp(x @ x), lambda x: x + 1.0, x),
                     jax.ShapeDtypeStruct((), jnp.bool_), _s(6, 6))
    assert out["matmul_flops"] == 2 * 6**3 and out["transcendentals"] == 36


class _Layer(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x, _):
        return x + nn.gelu(nn.Dense(self.width)(x)), None


class _Stack(nn.Module):
    width: int
    depth: int
    scan: bool

    @nn.compact
    def __call__(self, x):
        if self.scan:
            layers = nn.scan(_Layer, variable_axes={"params": 0}, split_rngs={"params": True},
                             length=self.depth)
            return layers(self.width)(x, None)[0]
        for _ in range(self.depth):
            x = _Layer(self.width)(x, None)[0]
        return x


@pytest.mark.parametrize("grad", [False, True])
def test_nn_scan_layers_count_like_unrolled_layers(grad):
    x = jnp.zeros((3, 16))
    counts = []
    for scan in (True, False):
        model = _Stack(16, 5, scan)
        params = jax.eval_shape(model.init, jax.random.key(0), x)
        loss = lambda p, model=model: jnp.sum(model.apply(p, x) ** 2)  # noqa: E731
        counts.append(step_flops(jax.grad(loss) if grad else loss, params))
    dense = 2 * 3 * 16 * 16
    # the unrolled backward skips the first layer's unused input gradient (a [3, 16] @ [16, 16]
    # matmul and its add into the residual gradient); the scanned one computes it in every trip
    extra = (dense + 3 * 16, dense) if grad else (0, 0)
    assert counts[0]["flops"] == counts[1]["flops"] + extra[0]
    assert counts[0]["matmul_flops"] == counts[1]["matmul_flops"] + extra[1]
    assert counts[0]["transcendentals"] == counts[1]["transcendentals"]
    assert counts[0]["matmul_flops"] == (3 if grad else 1) * 5 * dense


def test_scan_free_count_is_close_to_xla():
    model = nn.Sequential([nn.Dense(64), nn.relu, nn.Dense(64), nn.relu, nn.Dense(10)])
    x = jnp.zeros((32, 48))
    params = jax.eval_shape(model.init, jax.random.key(0), x)

    def grad(p, x):
        return jax.grad(lambda p: jnp.mean(jax.nn.log_softmax(model.apply(p, x))))(p)

    ours = step_flops(grad, params, x)["flops"]
    xla = _xla_flops(grad, params, x)
    assert abs(ours - xla) / xla < 0.25, (ours, xla)


def test_conv_count():
    n, h, w, cin, cout, kh, kw = 2, 9, 9, 6, 8, 3, 3
    conv = lambda x, k: lax.conv_general_dilated(  # noqa: E731
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    out = step_flops(conv, _s(n, h, w, cin), _s(kh, kw, cin, cout))
    assert out["flops"] == out["matmul_flops"] == 2 * (n * h * w * cout) * cin * kh * kw
    grouped = lambda x, k: lax.conv_general_dilated(  # noqa: E731
        x, k, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=3)
    out = step_flops(grouped, _s(n, h, w, cin), _s(kh, kw, cin // 3, 9))
    assert out["flops"] == 2 * (n * 4 * 4 * 9) * (cin // 3) * kh * kw


def test_info_counts_every_scanned_tarflow_layer(data_dir):
    """TarFlow smoke (2 blocks, 8 layers per block, 16 tokens of width 64): the jaxpr count
    matches the hand count of a training step; XLA's count agrees with it when the layer loop
    is unrolled (the default) and sees one layer per block when it is a rolled scan."""
    from jaxflows.train import load_config
    from jaxflows.train.info import model_info

    blocks, layers, width, tokens = 2, 8, 64, 16
    config = load_config("experiments/configs/tarflow_imagenet64.py:smoke", [
        f"--config.data.data_dir={data_dir}", f"--config.model.layers_per_block={layers}"])
    info = model_info(config, compile_step=False)
    assert info["example"]["image"] == "uint8[8, 8, 1]"
    # forward + input and weight gradients: 6 flops per matmul weight per token, plus the two
    # [T, T] attention matmuls (3 x 2 x 2 T^2 C per layer)
    per_layer = 12 * width * width * tokens * 6 + 12 * tokens**2 * width
    io = 2 * (4 * width + width * 8) * tokens * 6  # proj_in [4, C], proj_out [C, 2*4] per block
    hand = blocks * (layers * per_layer) + io  # 7.88e7 (the count: 0.01% less, no image grad)
    assert abs(info["matmul_flops_per_example"] - hand) / hand < 0.01
    assert 0.95 < info["matmul_flops_per_example"] / info["flops_per_example"] <= 1
    ratio = info["flops_per_example"] / info["xla_flops_per_example"]
    assert 0.95 < ratio < 1.05, ratio
    # a rolled scan: XLA sees one layer per block, the ratio is about the layer count (7.4)
    config.model.unroll_layers = False
    rolled = model_info(config, compile_step=False)
    assert rolled["flops_per_example"] == info["flops_per_example"]
    ratio = rolled["flops_per_example"] / rolled["xla_flops_per_example"]
    assert 0.85 * layers < ratio < layers, ratio
