"""SeqFlow on molecules: decode(encode(x)) = x on held-out molecules, and each kind of bad
input gets a per-molecule outcome instead of an exception."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

pytest.importorskip("rdkit")
pytest.importorskip("selfies")

from jaxflows.chem.selfies_vocab import Vocabulary, smiles_to_tokens  # noqa: E402
from jaxflows.models.seqflow_codec import TOO_LONG  # noqa: E402
from jaxflows.models.seqflow_task import SeqFlowTask, default_model_config  # noqa: E402
from jaxflows.train.task import DataInfo  # noqa: E402

TRAIN = ["CCO", "c1ccccc1", "CC(=O)Nc1ccc(O)cc1", "CCN(CC)CC", "OC(=O)C1CCCCC1", "CC#N",
         "Clc1ccccc1Br", "CCS(=O)(=O)N"]
HELD_OUT = ["OCCO", "c1ccncc1", "CC(C)(C)Br", "NC(=O)c1ccccc1", "CCOC(=O)C"]
L = 24


@pytest.fixture(scope="module")
def codec():
    vocab = Vocabulary.from_sequences(smiles_to_tokens(s)[1] for s in TRAIN + HELD_OUT)
    info = DataInfo({"tokens": jax.ShapeDtypeStruct((L,), jnp.int32)}, len(TRAIN),
                    metadata={"vocab": vocab.to_list()})
    c = ml_collections.ConfigDict()
    c.model = default_model_config(features=8, hidden=8, lstm_layers=1, num_flow_layers=1,
                                   num_couplings=2, coupling_hidden=8, max_len=0,
                                   sample_batch_size=4)
    task = SeqFlowTask(c, info)
    params = jax.jit(task.init)(jax.random.key(0), {"tokens": jnp.ones((1, L), jnp.int32)})
    return task.codec(), jax.device_get(params)


def test_round_trip_is_exact_on_held_out_molecules(codec):
    codec, params = codec
    enc = codec.encode_smiles(params, HELD_OUT)
    assert enc.ok.all() and enc.z.shape == (len(HELD_OUT), L, 8)
    dec = codec.decode(params, enc.z)
    np.testing.assert_array_equal(dec.raw, enc.tokens)       # exact left inverse
    assert dec.valid.all()
    from jaxflows.chem.selfies_vocab import canonical_smiles
    assert [canonical_smiles(s) for s in dec.smiles] == enc.canonical
    # flat latents [N, L * F] (the GP's view) decode the same
    flat = codec.decode(params, enc.z.reshape(len(HELD_OUT), -1))
    np.testing.assert_array_equal(flat.raw, dec.raw)


def test_bad_molecules_are_flagged_not_raised(codec):
    codec, params = codec
    long_chain = "C" * (L + 5)
    enc = codec.encode_smiles(params, ["CCO", "not a smiles(", "", "[Se]CC", long_chain])
    assert enc.ok.tolist() == [True, False, False, False, False]
    assert enc.reasons == [None, "rdkit_parse", "empty", "unknown_token", TOO_LONG]
    assert not enc.z[1:].any()


def test_random_latents_decode_with_a_validity_mask(codec):
    codec, params = codec
    z = 3.0 * np.random.default_rng(0).standard_normal((6, L, 8)).astype(np.float32)
    dec = codec.decode(params, z)
    assert dec.tokens.shape == (6, L) and dec.valid.dtype == bool
    assert all((s == "") == (not v) for s, v in zip(dec.smiles, dec.valid, strict=True))
    with pytest.raises(ValueError, match="NaN"):
        codec.decode(params, np.full((1, L, 8), np.nan, np.float32))
    with pytest.raises(ValueError, match="latents must be"):
        codec.decode(params, np.zeros((1, L, 7), np.float32))
