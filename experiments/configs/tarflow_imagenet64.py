"""TarFlow 2-768-8-8 on 64x64 ImageNet (ml-tarflow's README runs).

Rows (``experiments/configs/tarflow_imagenet64.py:ROW``):
  * ``uncond``: unconditional generation, Gaussian noise 0.05, bf16, 200 epochs, batch 256,
    lr 1e-4 (about 460M params). Data: TFDS ``downsampled_imagenet/64x64`` (the official
    "imagenet64", unlabelled).
  * ``bpd``: the likelihood run: same model, uniform dequantisation, fp32, 100 epochs; target
    2.99 bits/dim on the validation split (paper). Best checkpoint by ``bpd``.
  * ``cond``: class-conditional, 1000 classes, label dropout 0.1, noise 0.05, bf16, 200 epochs
    (about 466M params). Needs labels, so it reads TFDS ``imagenet_resized/64x64`` (box-resized
    ImageNet; ml-tarflow resizes + centre-crops the original ImageNet instead). FID eval in the
    paper uses guidance 2.3 (annealed).
  * ``smoke``: the same structure, tiny, on 8x8 digits; < 60 s on a CPU.
Optimiser (ml-tarflow): AdamW (0.9, 0.95), weight decay 1e-4, one warmup epoch, cosine to 1e-6.
Memory (the paper's 8 devices, batch 32 each): every layer rematerialised (``model.remat='full'``)
and attention that never holds the ``[B, H, N, N]`` probabilities (``model.attention='auto'``:
cuDNN flash attention on GPUs in bf16, query-chunked elsewhere); ``jaxflows info`` on 8 devices
estimates about 20e9 bytes per device (about 405e9 with einsum attention and no remat).
"""

from tarflow_recipe import official_recipe_config

from jaxflows.models.tarflow_config import default_model_config


def get_config(arg: str = "uncond"):
    """Returns the config of row ``arg`` (uncond | bpd | cond | smoke)."""
    c = official_recipe_config(learning_rate=1e-4)
    c.data.name = "downsampled_imagenet/64x64"
    c.data.image_shape = (64, 64, 3)  # for `jaxflows info` where the data is absent
    c.data.num_classes = 1000
    c.data.eval_split = "validation"
    c.data.test_split = "validation"
    c.train.batch_size = 256
    c.train.eval_batch_size = 512  # divisible by 8/16/32/64-way data parallelism
    c.train.num_epochs = 200.0
    c.train.eval_every_epochs = 5.0
    c.train.checkpoint_every_secs = 1800.0
    c.dtype = "bfloat16"
    # paper scale on 8 devices (batch 32 per device, 1024 tokens): rematerialise every layer and
    # never hold the [B, H, N, N] attention probabilities (cuDNN flash attention on GPUs in bf16,
    # query-chunked attention elsewhere); `jaxflows info` shows the estimate and what it assumes
    memory = dict(remat="full", attention="auto")
    big = dict(patch_size=2, channels=768, num_blocks=8, layers_per_block=8, head_dim=64)
    if arg == "uncond":
        c.model = default_model_config(noise_type="gaussian", noise_std=0.05, **big, **memory)
    elif arg == "bpd":
        c.model = default_model_config(noise_type="uniform", noise_std=0.0, **big, **memory)
        c.train.num_epochs = 100.0
        c.dtype = "float32"
    elif arg == "cond":
        c.data.name = "imagenet_resized/64x64"
        c.model = default_model_config(noise_type="gaussian", noise_std=0.05, num_classes=1000,
                                       drop_label=0.1, sample_guidance=2.3, **big,
                                       **memory)
    elif arg == "smoke":
        c.data.name = "digits"
        c.data.eval_split = "validation"
        c.data.test_split = "test"
        c.model = default_model_config(
            patch_size=2, channels=64, head_dim=32, num_blocks=2, layers_per_block=2,
            noise_type="gaussian", noise_std=0.05)
        c.train.batch_size = 64
        c.train.eval_batch_size = 200
        c.train.num_steps = 40
        c.train.eval_every_epochs = 1.0
        c.train.log_every_steps = 10
        c.train.checkpoint_every_secs = 10.0
        c.optim.learning_rate = 1e-3
        c.dtype = "float32"
    else:
        raise ValueError(f"unknown row {arg!r}; rows: uncond, bpd, cond, smoke")
    return c
