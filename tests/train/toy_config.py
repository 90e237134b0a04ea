"""Engine-test config: the toy classifier on digits, a task named by module path (toy_task)."""

from jaxflows.train.config import base_config


def get_config(arg: str = "default"):
    c = base_config()
    c.model.name = "toy_task"  # tests/train/toy_task.py (on sys.path: the config dir)
    c.model.hidden = 32
    c.model.noise = 0.05  # input noise drawn from the step rng
    c.model.nan_at_step = -1  # >= 0: the loss is NaN at that step (non-finite update tests)
    c.data.name = "digits"
    c.train.batch_size = 64
    c.train.eval_batch_size = 64
    c.train.num_epochs = 2.0
    c.train.log_every_steps = 5
    c.train.eval_every_epochs = 1.0
    c.train.progress_bar = False
    c.optim.learning_rate = 3e-3
    if arg == "long":  # for kill/resume tests: long enough to be killed mid-run
        c.train.num_epochs = 12.0
        c.train.checkpoint_every_secs = 0.5
    elif arg != "default":
        raise ValueError(f"unknown row {arg!r}; rows: default, long")
    return c
