"""Same config and seed -> same losses on 1 device, data=8, data=2 x fsdp=4, and repeated runs;
FSDP really shards the parameters."""

import os

import jax
import numpy as np
from helpers import TOY, final_loss, losses

from jaxflows.train import build, load_config, train


def _config(data_dir, *overrides):
    return load_config(f"{TOY}:default", [f"--config.data.data_dir={data_dir}", *overrides])


def _run(tmp_path, data_dir, name, *overrides):
    wd = os.path.join(tmp_path, name)
    train(_config(data_dir, *overrides), wd, final_eval=False)
    return wd


def test_same_loss_on_every_mesh_and_repeatable(tmp_path, data_dir):
    one = _run(tmp_path, data_dir, "one", "--config.mesh.data=1")
    again = _run(tmp_path, data_dir, "again", "--config.mesh.data=1")
    dp8 = _run(tmp_path, data_dir, "dp8", "--config.mesh.data=8")
    fsdp = _run(tmp_path, data_dir, "fsdp", "--config.mesh.data=2", "--config.mesh.fsdp=4")
    assert losses(one) == losses(again)  # two identical runs write identical losses
    ref = final_loss(one)
    for wd in (dp8, fsdp):
        np.testing.assert_allclose(final_loss(wd), ref, rtol=1e-5)


def test_fsdp_shards_parameters(data_dir):
    run = build(_config(data_dir, "--config.mesh.data=2", "--config.mesh.fsdp=4"))
    with jax.set_mesh(run.mesh):
        state = run.init_state(0)
    kernel = state.params["Dense_0"]["kernel"]  # logical ('embed', 'hidden') = (64, 32)
    assert kernel.sharding.spec[0] == "fsdp"
    assert kernel.addressable_shards[0].data.shape == (16, 32)
    # optimiser moments follow their parameter's sharding
    mu = state.opt_state[0].mu["Dense_0"]["kernel"]
    assert mu.sharding.spec == kernel.sharding.spec
    # the batch is split over data x fsdp
    assert run.batch_sharding.spec == jax.P(("data", "fsdp"))


def test_grad_accumulation_matches_full_batch(tmp_path, data_dir):
    common = ("--config.mesh.data=1", "--config.train.num_steps=5", "--config.model.noise=0.0",
              "--config.train.eval_every_epochs=0")
    full = _run(tmp_path, data_dir, "full", *common)
    acc = _run(tmp_path, data_dir, "acc", *common, "--config.optim.grad_accum_steps=4")
    # the loss logged at step 5 is the pre-update loss of step 5's batch: same data, same params
    np.testing.assert_allclose(final_loss(acc), final_loss(full), rtol=1e-4)


def test_steps_per_dispatch_matches_one_step_per_call(tmp_path, data_dir):
    one = _run(tmp_path, data_dir, "k1", "--config.mesh.data=1")
    k4 = _run(tmp_path, data_dir, "k4", "--config.mesh.data=1",
              "--config.train.steps_per_dispatch=4")
    a, b = losses(one), losses(k4)
    assert [s for s, _ in a] == [s for s, _ in b]  # logs land on the same steps
    np.testing.assert_allclose([v for _, v in b], [v for _, v in a], rtol=1e-5)
