"""Config loading, overrides and up-front validation errors."""

import os

import pytest

from jaxflows.errors import ConfigError
from jaxflows.train import mesh as mesh_lib
from jaxflows.train.config_loader import apply_overrides, load_config
from jaxflows.train.loop import validate

TOY = os.path.join(os.path.dirname(__file__), "toy_config.py")


def test_overrides_apply_with_types():
    c = load_config(f"{TOY}:default", ["--config.train.batch_size=32",
                                       "--config.optim.learning_rate=1e-4",
                                       "--config.train.progress_bar=true",
                                       "--config.mesh.fsdp=2"])
    assert c.train.batch_size == 32 and isinstance(c.train.batch_size, int)
    assert c.optim.learning_rate == pytest.approx(1e-4)
    assert c.train.progress_bar is True
    assert c.mesh.fsdp == 2


def test_unknown_key_names_it_and_suggests():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.batch_szie'.*"
                                          r"train\.batch_size"):
        load_config(f"{TOY}:default", ["--config.train.batch_szie=3"])


@pytest.mark.parametrize("override,match", [
    ("--config.train.batch_size=abc", "expects an int"),
    ("--config.train.progress_bar=maybe", "expects a bool"),
    ("--config.optim.learning_rate=fast", "expects a float"),
    ("--config.train=3", "is a group"),
])
def test_wrong_types(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(f"{TOY}:default", [override])


def test_unknown_row_and_file():
    with pytest.raises(ConfigError, match="unknown row"):
        load_config(f"{TOY}:nope")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("experiments/configs/no_such_file.py:smoke")


def test_batch_not_divisible_by_data_parallel_size():
    c = apply_overrides(load_config(f"{TOY}:default"), ["train.batch_size=60"])
    with pytest.raises(ConfigError, match="batch 60 is not divisible by the data-parallel size 8"):
        validate(c, num_devices=8, num_processes=1)


def test_mesh_larger_than_device_count():
    c = apply_overrides(load_config(f"{TOY}:default"), ["mesh.data=4", "mesh.fsdp=4"])
    with pytest.raises(ConfigError, match="needs 16 devices, but only 8 are available"):
        validate(c, num_devices=8, num_processes=1)


def test_mesh_auto_fill():
    c = load_config(f"{TOY}:default", ["--config.mesh.fsdp=4"])
    assert mesh_lib.mesh_shape(c.mesh, 8) == (2, 4, 1)
    c = load_config(f"{TOY}:default", ["--config.mesh.data=2", "--config.mesh.fsdp=-1"])
    assert mesh_lib.mesh_shape(c.mesh, 8) == (2, 4, 1)
    c = load_config(f"{TOY}:default", ["--config.mesh.fsdp=-1"])
    with pytest.raises(ConfigError, match="more than one -1"):
        mesh_lib.mesh_shape(c.mesh, 8)


def test_grad_accum_must_divide_batch():
    c = load_config(f"{TOY}:default", ["--config.optim.grad_accum_steps=3"])
    with pytest.raises(ConfigError, match="not divisible by config.optim.grad_accum_steps=3"):
        validate(c, num_devices=1, num_processes=1)


def test_schedule_that_trains_nothing_is_refused():
    for bad in ("--config.train.num_epochs=-1", "--config.train.num_epochs=0"):
        c = load_config(f"{TOY}:default", [bad])
        with pytest.raises(ConfigError, match="trains nothing"):
            validate(c, 8, 1)
    # num_steps > 0 takes over from num_epochs
    validate(load_config(f"{TOY}:default", ["--config.train.num_epochs=0",
                                            "--config.train.num_steps=5"]), 8, 1)


@pytest.mark.parametrize("body, where, what", [
    ("def get_config(arg=''):\n    return base_config(\n", ":3:", "never closed"),
    ("x = 1\nimport no_such_module_xyz\n", ":3:", "ModuleNotFoundError"),
    ("def get_config(arg=''):\n    c = base_config()\n    return c.nope\n", ":4:",
     "AttributeError"),
])
def test_broken_config_file_is_one_line_with_file_and_line(tmp_path, body, where, what):
    path = tmp_path / "broken.py"
    path.write_text("from jaxflows.train.config import base_config\n" + body)
    with pytest.raises(ConfigError) as e:
        load_config(f"{path}:row")
    msg = str(e.value)
    assert f"{path}{where}" in msg and what in msg and "\n" not in msg


def test_config_may_import_a_sibling_module(tmp_path):
    (tmp_path / "recipe_xyz.py").write_text("LR = 0.123\n")
    (tmp_path / "cfg.py").write_text(
        "from recipe_xyz import LR\nfrom jaxflows.train.config import base_config\n"
        "def get_config(arg=''):\n    c = base_config()\n    c.optim.learning_rate = LR\n"
        "    return c\n")
    assert load_config(f"{tmp_path / 'cfg.py'}").optim.learning_rate == 0.123
