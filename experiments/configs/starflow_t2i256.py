"""STARFlow ``24(6)-3072`` text-to-image at 256x256 (Gu et al. 2025, arXiv 2506.06276; the 3.8B
T2I model; apple/ml-starflow ``configs/starflow_3B_t2i_256x256.yaml``).

Rows (``experiments/configs/starflow_t2i256.py:ROW``):
  * ``t2i``: 5 shallow blocks of 2 layers and a deep block of 24 (last in the data -> noise
    order), width 3072, head dim 64, RoPE with a text axis, SOS, softplus, soft clip 4, final
    RMSNorm, L2R; the deep block takes a 128-token prefix of frozen FLAN-T5-XL features (dim
    2048) through ``proj_txt``. Exactly 3,858,281,544 parameters (the flow; the text encoder and
    the VAE are not counted), the official count.
    Data (computed outside this library, ``config.model.autoencoder='none'``): a prepared TFDS
    dataset with ``latent [32, 32, 4]`` (unscaled SD-VAE means), ``text [128, 2048]`` (T5
    features, padded) and ``text_mask [128]``; the task zeroes the padded rows (they are attended
    to, as officially), multiplies the latents by 0.18215 and adds noise 0.3. Caption dropout 0.1
    replaces the features by zeros (officially T5("")'s features; pass those as ``null_text`` to
    ``StarFlowTask.sample`` for guidance). Without a ``text`` field (``jaxflows info``) the task
    uses the null text.
    Recipe: the released config's batch 1024 and lr 6.4e-5 (AdamW (0.9, 0.95), weight decay
    1e-4, one warmup epoch, cosine to 1e-6), 400M images (390,625 steps); bf16, every layer
    rematerialised.
    Sampling: guidance 4.0 (the paper's T2I samples), Gaussian-product rule, Jacobi chunks of 16.
  * ``smoke``: the same structure with a tiny text prefix on the embedded 8x8 digits (a digits
    "latent" grid, no text field: the null text); < 60 s on a CPU.
"""

from tarflow_recipe import official_recipe_config

from jaxflows.models.starflow_config import SD_LATENT_SCALE, default_model_config

ROWS = ("t2i", "smoke")


def get_config(arg: str = "t2i"):
    """Returns the config of row ``arg`` (t2i | smoke)."""
    if arg not in ROWS:
        raise ValueError(f"unknown row {arg!r}; rows: {', '.join(ROWS)}")
    c = official_recipe_config(learning_rate=6.4e-5)
    c.data.name = "cc12m_t5xl_sdvae_latents"
    c.data.image_shape = (32, 32, 4)  # the latent grid, for `jaxflows info` without the data
    c.data.num_classes = 0
    c.data.eval_split = "validation"
    c.data.test_split = "validation"
    c.train.batch_size = 1024
    c.train.eval_batch_size = 512
    c.train.num_steps = 390_625  # 400M images
    c.train.eval_every_epochs = 1.0
    c.train.checkpoint_every_secs = 1800.0
    c.dtype = "bfloat16"
    c.model = default_model_config(
        width=3072, layers_per_block=(2, 2, 2, 2, 2, 24), head_dim=64, text_len=128,
        text_dim=2048, autoencoder="none", latent_scale=SD_LATENT_SCALE, noise_std=0.3,
        drop_label=0.1, sample_guidance=4.0, sample_rule="gaussian", jacobi_chunk=16,
        jacobi_tol=1e-3, remat="full", attention="auto")
    if arg == "smoke":
        c.data.name = "digits"
        c.data.image_shape = ()
        c.data.test_split = "test"
        c.model = default_model_config(
            width=64, layers_per_block=(1, 1, 2), head_dim=32, text_len=4, text_dim=8,
            autoencoder="none", latent_scale=1 / 64, noise_std=0.3, drop_label=0.1)
        c.train.batch_size = 64
        c.train.eval_batch_size = 200
        c.train.num_steps = 60
        c.train.eval_every_epochs = 1.0
        c.train.log_every_steps = 10
        c.train.checkpoint_every_secs = 10.0
        c.optim.learning_rate = 1e-3
        c.optim.end_lr_factor = 1e-3
        c.optim.warmup_epochs = 1.0
        c.dtype = "float32"
    return c
