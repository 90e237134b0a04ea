"""STARFlow ``18(6)-2048`` class-conditional on ImageNet 256x256 (Gu et al. 2025, "STARFlow:
Scaling Latent Normalizing Flows for High-resolution Image Synthesis", arXiv 2506.06276; the
paper's 1.4B ImageNet model, FID 2.40).

Rows (``experiments/configs/starflow_imagenet256.py:ROW``):
  * ``cond``: deep-shallow layout, 5 shallow blocks of 2 layers and a deep block of 18 (data ->
    noise order: the deep block is last, next to the prior), width 2048, head dim 64, RoPE, SOS
    token, softplus scale, soft clip 4, final RMSNorm, L2R order; 1000 classes through the deep
    block's one-hot prefix (``eye(1001)``, null id 1000, label dropout 0.1). Exactly
    1,412,255,816 parameters, the count of the official classes (preset ``TarFlow_XLv2_1`` with
    the T2I flags and labels through the text path, ``txt_size=1, txt_dim=1001``).
    Data: SD-VAE latents (f8, 4 channels: 32x32x4 at 256 px, ``patch_size`` 1) computed outside
    this library (``config.model.autoencoder='none'``): a prepared TFDS dataset with a float
    ``latent [32, 32, 4]`` field (unscaled VAE means) and ``label``; the task multiplies by
    0.18215 and adds noise 0.3. bf16 matmuls (flow arithmetic float32), every layer
    rematerialised, memory-bounded attention.
    Recipe (paper, App. B.2): batch 512, AdamW (0.9, 0.95), weight decay 1e-4, lr 1e-4 after one
    warmup epoch, cosine to 1e-6, 400M images (312 epochs). Sampling: guidance 3.0 (the paper's
    ImageNet figures; the official script uses 3.6) with the Gaussian-product rule in the deep
    block, block-wise Jacobi over chunks of 16 tokens (threshold 1e-3, the official image script),
    and the one-step score denoiser (no fine-tuned decoder here). Decoding the latents needs the
    SD VAE outside this library (``jaxflows sample`` writes them to a ``.npy`` file).
  * ``smoke``: the same structure (class prefix, latents from the data, deep block last), tiny, on
    the embedded 8x8 digits read as a 8x8x1 "latent" grid; < 60 s on a CPU.
"""

from tarflow_recipe import official_recipe_config

from jaxflows.models.starflow_config import SD_LATENT_SCALE, default_model_config

ROWS = ("cond", "smoke")


def get_config(arg: str = "cond"):
    """Returns the config of row ``arg`` (cond | smoke)."""
    if arg not in ROWS:
        raise ValueError(f"unknown row {arg!r}; rows: {', '.join(ROWS)}")
    c = official_recipe_config(learning_rate=1e-4)  # = STARFlow's B.2 recipe
    c.data.name = "imagenet256_sdvae_latents"
    c.data.image_shape = (32, 32, 4)  # the latent grid, for `jaxflows info` without the data
    c.data.num_classes = 1000
    c.data.eval_split = "validation"
    c.data.test_split = "validation"
    c.train.batch_size = 512
    c.train.eval_batch_size = 512
    c.train.num_epochs = 312.0  # 400M images / 1.28M
    c.train.eval_every_epochs = 5.0
    c.train.checkpoint_every_secs = 1800.0
    c.dtype = "bfloat16"
    c.model = default_model_config(
        width=2048, layers_per_block=(2, 2, 2, 2, 2, 18), head_dim=64, num_classes=1000,
        autoencoder="none", latent_scale=SD_LATENT_SCALE, noise_std=0.3, drop_label=0.1,
        sample_guidance=3.0, sample_rule="gaussian", jacobi_chunk=16, jacobi_tol=1e-3,
        remat="full", attention="auto")
    if arg == "smoke":
        c.data.name = "digits"
        c.data.image_shape = ()
        c.data.num_classes = 0
        c.data.test_split = "test"
        c.model = default_model_config(
            width=64, layers_per_block=(1, 1, 2), head_dim=32, num_classes=10,
            autoencoder="none", latent_scale=1 / 64, noise_std=0.3, drop_label=0.1)
        c.train.batch_size = 64
        c.train.eval_batch_size = 200
        c.train.num_steps = 60
        c.train.eval_every_epochs = 1.0
        c.train.log_every_steps = 10
        c.train.checkpoint_every_secs = 10.0
        c.optim.learning_rate = 1e-3
        c.optim.end_lr_factor = 1e-3
        c.dtype = "float32"
    return c
