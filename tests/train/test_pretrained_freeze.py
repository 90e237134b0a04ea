"""config.init_from + config.optim.freeze: pretrained subtrees load, frozen leaves stay bitwise
unchanged with no optimiser state, and every misuse is a one-line ConfigError."""

import jax
import numpy as np
import pytest
from helpers import TOY

from jaxflows.errors import ConfigError
from jaxflows.train import load_config, train
from jaxflows.train.loop import build
from jaxflows.train.optim import frozen_mask
from jaxflows.train.pretrained import read_tree, save_params

BASE = ("--config.train.num_steps=12", "--config.train.eval_every_epochs=0",
        "--config.train.log_every_steps=4")


def _config(data_dir, *extra):
    return load_config(f"{TOY}:default", [*BASE, f"--config.data.data_dir={data_dir}", *extra])


@pytest.fixture(scope="module")
def source_workdir(tmp_path_factory, data_dir):
    wd = str(tmp_path_factory.mktemp("src"))
    train(_config(data_dir), wd, final_eval=False)
    return wd


def test_frozen_pretrained_leaves_are_bitwise_unchanged(tmp_path, data_dir, source_workdir):
    wd = str(tmp_path / "dst")
    config = _config(
        data_dir, "--config.optim.freeze=('Dense_0/.*',)",
        f"--config.init_from=({{'path': '{source_workdir}', 'source': 'params/Dense_0', "
        "'target': 'Dense_0'},)",
        "--config.optim.name=adamw", "--config.optim.weight_decay=0.1",
        "--config.optim.ema_decay=0.9", "--config.optim.grad_clip_norm=0.5")
    train(config, wd, final_eval=False)
    src, dst = read_tree(source_workdir), read_tree(wd)
    for k in ("kernel", "bias"):
        ref = src["params"]["Dense_0"][k]
        for tree in ("params", "ema_params", "best_params"):
            assert dst[tree]["Dense_0"][k].tobytes() == ref.tobytes(), (tree, k)
        # the trained layers did move
        assert not np.array_equal(dst["params"]["Dense_1"][k], src["params"]["Dense_1"][k])
    # the optimiser keeps no state for frozen leaves (optax.multi_transform + set_to_zero)
    paths = [jax.tree_util.keystr(p) for p, _ in
             jax.tree_util.tree_leaves_with_path(dst["opt_state"])]
    assert paths and not [p for p in paths if "Dense_0" in p]
    assert [p for p in paths if "Dense_1" in p]


def test_init_from_an_orbax_params_checkpoint(tmp_path, data_dir, source_workdir):
    params = read_tree(source_workdir)["params"]
    ckpt = save_params(str(tmp_path / "params_ckpt"), params)
    run = build(_config(data_dir, f"--config.init_from=({{'path': '{ckpt}'}},)"))
    with jax.set_mesh(run.mesh):
        state = run.init_state()
    got = jax.device_get(state.params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params)):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    # the fresh optimiser state starts from the loaded params (Adam moments at zero)
    assert all(float(np.abs(np.asarray(x)).max()) == 0.0
               for x in jax.tree.leaves(state.opt_state[0].mu))


def test_init_from_misuse_names_the_problem(tmp_path, data_dir, source_workdir):
    def err(*extra):
        run = build(_config(data_dir, *extra))
        with pytest.raises(ConfigError) as e, jax.set_mesh(run.mesh):
            run.init_state()
        return str(e.value)

    msg = err(f"--config.init_from=({{'path': '{source_workdir}', 'source': 'params/Dense_9'}},)")
    assert "'params/Dense_9'" in msg and "Dense_0" in msg
    msg = err(f"--config.init_from=({{'path': '{source_workdir}', 'source': 'params/Dense_0', "
              "'target': 'Dense_1'},)")  # [64, 32] kernel into a [32, 32] one
    assert "['kernel']" in msg and "[64, 32]" in msg and "[32, 32]" in msg
    assert "does not exist" in err(f"--config.init_from=({{'path': '{tmp_path}/nope'}},)")
    assert "neither" in err(f"--config.init_from=({{'path': '{tmp_path}'}},)")


def test_freeze_patterns_are_checked(data_dir):
    params = {"enc": {"w": np.zeros(2)}, "dec": {"w": np.zeros(2)}}
    assert frozen_mask(params, ["enc/.*"]) == {"enc": {"w": True}, "dec": {"w": False}}
    with pytest.raises(ConfigError, match="matches no parameter"):
        frozen_mask(params, ["encoder/.*"])
    with pytest.raises(ConfigError, match="bad regex"):
        frozen_mask(params, ["enc/("])
