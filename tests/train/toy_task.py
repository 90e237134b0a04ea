"""A tiny task for engine tests, defined outside jaxflows: an MLP classifier with logically
named weights. Configs name it by module path (``config.model.name = "toy_task"``)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxflows.train.task import Task


class _MLP(nn.Module):
    hidden: int = 32
    classes: int = 10

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.lecun_normal()
        x = nn.Dense(self.hidden, kernel_init=nn.with_logical_partitioning(
            init, ("embed", "hidden")))(x)
        x = jnp.tanh(x)
        x = nn.Dense(self.hidden, kernel_init=nn.with_logical_partitioning(
            init, ("hidden", "embed")))(x)
        x = jnp.tanh(x)
        return nn.Dense(self.classes)(x)


class ToyClassifier(Task):
    """Cross-entropy of labels from flattened, randomly perturbed pixels (uses the step rng)."""

    best_metric = "loss"

    def _model(self):
        return _MLP(hidden=self.config.model.hidden, classes=self.data_info.num_classes)

    def _inputs(self, image, rng=None):
        x = image.reshape(image.shape[0], -1).astype(jnp.float32) / 255.0
        if rng is not None and self.config.model.noise > 0:
            x = x + self.config.model.noise * jax.random.normal(rng, x.shape)
        return x

    def init(self, rng, batch):
        return self._model().init(rng, self._inputs(batch["image"]))["params"]

    def loss(self, params, batch, rng, step):
        logits = self._model().apply({"params": params}, self._inputs(batch["image"], rng))
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        acc = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        loss = jnp.mean(ce)
        nan_at = self.config.model.get("nan_at_step", -1)  # inject a NaN loss at that step
        loss = jnp.where(step == nan_at, jnp.nan, loss)
        return loss, {"accuracy": acc}

    def eval_batch(self, params, batch, rng):
        logits = self._model().apply({"params": params}, self._inputs(batch["image"]))
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        return {"loss": ce, "accuracy": (jnp.argmax(logits, -1) == batch["label"]).astype(
            jnp.float32)}

    sample_options = {"temperature": 1.0}

    def sample(self, params, rng, num, temperature=1.0):
        """Class labels drawn from the model's logits at random inputs (an int array)."""
        d = self.data_info.element_spec["image"].shape
        x = jax.random.uniform(rng, (num, *d)) * 255.0
        logits = self._model().apply({"params": params}, self._inputs(x)) / temperature
        return jax.random.categorical(jax.random.fold_in(rng, 1), logits)

    def write_samples(self, samples, path):
        with open(path, "w") as f:
            f.write("\n".join(str(int(s)) for s in samples) + "\n")
        return path


TASK = ToyClassifier
