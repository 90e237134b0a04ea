"""TACS on a hand-built decoder where token t depends on latent tokens 0..t."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxflows.bo import tacs

L, F = 6, 3
CALLS = []


def decode(z):
    """z: [B, L, F] -> [B, L]: token t is 1 iff every z_s[0] (s <= t) is above 500."""
    CALLS.append(z.shape)
    return jax.lax.cummin(z[..., 0], axis=1) > 500.0


def _expected(temperature=400.0):
    n = L - np.arange(L)                                       # resampling z_i flips tokens i..L-1
    omega = n * np.log(0.95 / 0.05)
    w = L * np.exp(omega / temperature) / np.exp(omega / temperature).sum()
    return omega, w


class TestTacs(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_exact_scores_weights_and_probs(self):
        z = jnp.full((2, L, F), 1000.0)                        # two anchors, all tokens 1
        x = jnp.ones((2, L), jnp.int32)
        CALLS.clear()
        omega = self.variant(lambda k: tacs.tacs_scores(k, z, x, decode))(jax.random.key(0))
        assert CALLS == [(2 * L, L, F)]                        # one batched decode call
        want_omega, want_w = _expected()
        np.testing.assert_allclose(omega, np.stack([want_omega] * 2), rtol=1e-6)
        w = tacs.tacs_weights(omega)
        np.testing.assert_allclose(w[0], want_w, rtol=1e-5)
        assert np.all(np.diff(np.asarray(w[0])) < 0)           # earlier tokens weigh more
        np.testing.assert_allclose(w.mean(-1), 1.0, rtol=1e-6)
        prob = self.variant(lambda k: tacs.perturb_prob(k, z, x, decode))(jax.random.key(0))
        np.testing.assert_allclose(prob[1], np.repeat(np.minimum(0.1 * want_w, 1.0), F),
                                   rtol=1e-5)

    def test_small_temperature_clips_at_one_and_disabled_is_uniform(self):
        z = jnp.full((L, F), 1000.0)
        x = jnp.ones((L,), jnp.int32)
        prob = tacs.perturb_prob(jax.random.key(0), z, x, decode, temperature=1.0,
                                 base_prob=0.5)
        _, w = _expected(1.0)
        assert 0.5 * w[0] > 1
        np.testing.assert_allclose(prob[:F], 1.0)              # 0.5 * w_0 > 1 -> 1
        np.testing.assert_allclose(prob[F:], np.repeat(0.5 * w[1:], F), rtol=1e-4)
        off = tacs.perturb_prob(jax.random.key(0), z, x, decode, enabled=False)
        np.testing.assert_array_equal(off, np.full(L * F, 0.1, np.float32))

    def test_invalid_decodes_count_as_all_changed(self):
        z = jnp.zeros((L, F))
        x = jnp.zeros((L,), jnp.int32)
        omega = tacs.tacs_scores(jax.random.key(0), z, x, lambda zz: -jnp.ones(zz.shape[:2]))
        np.testing.assert_allclose(omega, L * np.log(19.0), rtol=1e-6)

    def test_resample_tokens_changes_only_token_i(self):
        z = jnp.arange(L * F, dtype=jnp.float32).reshape(L, F)
        c = tacs.resample_tokens(jax.random.key(0), z)
        for i in range(L):
            keep = np.arange(L) != i
            np.testing.assert_array_equal(c[i][keep], z[keep])
            assert np.all(c[i][i] != z[i])
