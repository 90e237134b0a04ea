"""TarFlow 8-768-8-8 on AFHQ 256x256, 3 classes (ml-tarflow's released checkpoint).

Rows (``experiments/configs/tarflow_afhq256.py:ROW``):
  * ``cond``: patch 8, width 768, 8 blocks x 8 layers (about 463M params), Gaussian noise 0.07,
    3 classes, label dropout 0.1, bf16, batch 256, lr 1e-4, 4000 epochs. The main use is
    sampling from the converted official checkpoint (see :mod:`jaxflows.convert.tarflow`).
    Training needs AFHQ prepared as a TFDS dataset named ``afhq`` (train split, 256x256x3,
    labels cat/dog/wild) in the data dir; TFDS has no builder for it.
  * ``smoke``: the same structure, tiny, on 8x8 digits; < 60 s on a CPU.
Optimiser (ml-tarflow): AdamW (0.9, 0.95), weight decay 1e-4, one warmup epoch, cosine to 1e-6.
"""

from tarflow_recipe import official_recipe_config

from jaxflows.models.tarflow_config import default_model_config


def get_config(arg: str = "cond"):
    """Returns the config of row ``arg`` (cond | smoke)."""
    c = official_recipe_config(learning_rate=1e-4)
    c.data.name = "afhq"
    c.data.image_shape = (256, 256, 3)  # for `jaxflows info` where the data is absent
    c.data.num_classes = 3
    c.data.eval_split = "train"
    c.data.test_split = "train"
    c.train.batch_size = 256
    c.train.eval_batch_size = 256
    c.train.num_epochs = 4000.0
    c.train.eval_every_epochs = 200.0
    c.train.checkpoint_every_secs = 1800.0
    c.dtype = "bfloat16"
    # paper scale on 8 devices (batch 32 per device, 1024 tokens): rematerialise every layer and
    # never hold the [B, H, N, N] attention probabilities (cuDNN flash attention on GPUs in bf16,
    # query-chunked attention elsewhere); `jaxflows info` shows the estimate and what it assumes
    memory = dict(remat="full", attention="auto")
    if arg == "cond":
        c.model = default_model_config(
            patch_size=8, channels=768, num_blocks=8, layers_per_block=8, head_dim=64,
            noise_type="gaussian", noise_std=0.07, num_classes=3, drop_label=0.1,
            sample_guidance=1.0, sample_batch_size=16, **memory)
    elif arg == "smoke":
        c.data.name = "digits"
        c.data.eval_split = "validation"
        c.data.test_split = "test"
        c.model = default_model_config(
            patch_size=4, channels=64, head_dim=32, num_blocks=2, layers_per_block=2,
            noise_type="gaussian", noise_std=0.07, num_classes=10, drop_label=0.1)
        c.train.batch_size = 64
        c.train.eval_batch_size = 200
        c.train.num_steps = 40
        c.train.eval_every_epochs = 1.0
        c.train.log_every_steps = 10
        c.train.checkpoint_every_secs = 10.0
        c.optim.learning_rate = 1e-3
        c.dtype = "float32"
    else:
        raise ValueError(f"unknown row {arg!r}; rows: cond, smoke")
    return c
