"""SMILES <-> SELFIES token ids: round trips, failure reasons, the vocabulary's layout and JSON."""

import logging

import numpy as np
import pytest

pytest.importorskip("rdkit")
pytest.importorskip("selfies")

from jaxflows.chem import selfies_vocab as sv  # noqa: E402

MOLECULES = [
    "CC(=O)Oc1ccccc1C(=O)O",  # aspirin
    "Cn1cnc2c1c(=O)n(C)c(=O)n2C",  # caffeine
    "CC(C)Cc1ccc(C(C)C(=O)O)cc1",  # ibuprofen
    "C[C@H](N)C(=O)O",  # stereocentre
    "C/C=C/C",  # double-bond stereo
    "[NH4+]",  # charge
    "FC(F)(F)c1ccc(Br)cc1",
    "O=C1NC(=O)c2ccccc21",
    "c1ccc2ccccc2c1",
    "CC.O",  # two fragments
]


def canon(smiles):
    return sv.canonical_smiles(smiles)


@pytest.mark.parametrize("smiles", MOLECULES)
def test_round_trip_is_the_same_molecule(smiles):
    canonical, tokens = sv.smiles_to_tokens(smiles)
    assert canonical == canon(smiles)
    vocab = sv.Vocabulary.from_alphabet(tokens)
    ids = vocab.encode(tokens)
    assert ids.dtype == np.int32 and ids.shape == (len(tokens),)
    assert ids.min() >= 2  # specials are never emitted by encode
    assert canon(vocab.decode(ids)) == canonical
    assert vocab.decode(ids, canonical=True) == canonical
    # padding with <stop> changes nothing; tokens after the first <stop> are ignored
    padded = np.concatenate([ids, [sv.STOP_ID] * 3, ids])
    assert vocab.decode(padded, canonical=True) == canonical
    # <start> tokens are skipped
    assert vocab.decode(np.concatenate([[sv.START_ID], ids]), canonical=True) == canonical


def test_many_molecules_one_vocabulary():
    converted = [sv.smiles_to_tokens(s) for s in MOLECULES]
    vocab = sv.Vocabulary.from_sequences(t for _, t in converted)
    for canonical, tokens in converted:
        assert vocab.decode(vocab.encode(tokens), canonical=True) == canonical
        np.testing.assert_array_equal(vocab.encode_smiles(canonical), vocab.encode(tokens))


def test_vocabulary_layout():
    vocab = sv.Vocabulary.from_alphabet(["[O]", "[C]", "[=C]", "[C]", sv.STOP])
    assert vocab.tokens == ("<start>", "<stop>", "[=C]", "[C]", "[O]")
    assert vocab.index["<start>"] == sv.START_ID == 0
    assert vocab.index["<stop>"] == sv.STOP_ID == 1
    assert len(vocab) == 5 and "[C]" in vocab and "[N]" not in vocab
    with pytest.raises(ValueError, match=r"\[N\]"):
        vocab.encode(["[C]", "[N]"])
    assert vocab.unknown(["[C]", "[N]", "[S]"]) == ["[N]", "[S]"]
    with pytest.raises(ValueError, match="starts with"):
        sv.Vocabulary(["[C]", "<start>", "<stop>"])
    with pytest.raises(ValueError, match="duplicate"):
        sv.Vocabulary(["<start>", "<stop>", "[C]", "[C]"])
    with pytest.raises(ValueError, match="token ids"):
        vocab.decode([2, 7])


def test_decode_edge_cases():
    vocab = sv.Vocabulary.from_alphabet(["[C]", "[O]", "[Ring1]"])
    assert vocab.decode([sv.STOP_ID, 2, 3]) == ""  # empty sequence
    assert vocab.decode([]) == ""
    c, o = vocab.index["[C]"], vocab.index["[O]"]
    assert vocab.decode([c, o]) == "CO"  # no <stop> at all: every token is read
    assert vocab.decode_selfies([c, o, sv.STOP_ID, c]) == "[C][O]"
    assert vocab.tokens_of([sv.START_ID, c, sv.STOP_ID]) == ["[C]"]


def test_vocabulary_json_round_trip(tmp_path):
    vocab = sv.Vocabulary.from_sequences(sv.smiles_to_tokens(s)[1] for s in MOLECULES)
    text = vocab.to_json()
    again = sv.Vocabulary.from_json(text)
    assert again == vocab and again.tokens == vocab.tokens
    path = tmp_path / "vocab.json"
    path.write_text(text)
    assert sv.Vocabulary.from_json(path.read_text()) == vocab
    assert sv.Vocabulary(vocab.to_list()) == vocab


@pytest.mark.parametrize("smiles, reason", [
    ("C1CC", sv.RDKIT_PARSE),  # unclosed ring
    ("C(C)(C)(C)(C)C", sv.RDKIT_PARSE),  # pentavalent carbon
    ("not a smiles", sv.RDKIT_PARSE),
    ("", sv.EMPTY),
    ("   ", sv.EMPTY),
    ("FI(F)F", sv.SELFIES_ENCODE),  # RDKit accepts I(III); selfies' default constraints do not
])
def test_failures_name_their_reason(smiles, reason):
    with sv.quiet_rdkit(), pytest.raises(sv.ConversionError) as info:
        sv.smiles_to_tokens(smiles)
    assert info.value.reason == reason and info.value.smiles == smiles
    assert reason in str(info.value)


def test_tokenize_many_counts_failures_by_reason(caplog):
    smiles = list(MOLECULES) + ["C1CC", "FI(F)F", "", "C1CC", "xyz"]
    with caplog.at_level(logging.INFO, logger="jaxflows.chem.selfies_vocab"):
        out = sv.tokenize_many(smiles, chunk_size=4)
    assert len(out) == len(smiles)
    assert out.dropped() == {"empty": 1, "rdkit_parse": 3, "selfies_encode": 1}
    assert out.dropped(range(len(MOLECULES))) == {}
    assert out.examples["rdkit_parse"] == ["C1CC", "C1CC", "xyz"]
    np.testing.assert_array_equal(out.ok, [True] * len(MOLECULES) + [False] * 5)
    assert "not converted" in caplog.text  # reported, not silently dropped
    for i, s in enumerate(MOLECULES):
        canonical, tokens = sv.smiles_to_tokens(s)
        assert out.canonical[i] == canonical
        assert out.tokens(i) == tokens
        assert out.lengths[i] == len(tokens)
    for i in range(len(MOLECULES), len(smiles)):
        assert out.tokens(i) is None and out.canonical[i] is None and out.lengths[i] == 0
    assert out.reasons[len(MOLECULES):] == ["rdkit_parse", "selfies_encode", "empty",
                                            "rdkit_parse", "rdkit_parse"]


def test_tokenize_many_is_independent_of_workers_and_chunks():
    smiles = list(MOLECULES) * 3 + ["C1CC"]
    one = sv.tokenize_many(smiles, chunk_size=1000)
    many = sv.tokenize_many(smiles, num_workers=2, chunk_size=7, min_parallel=1)
    assert one.canonical == many.canonical and one.reasons == many.reasons
    assert [one.tokens(i) for i in range(len(smiles))] == [
        many.tokens(i) for i in range(len(smiles))]


def test_quiet_rdkit_restores_logging():
    from rdkit import rdBase

    before = rdBase.LogStatus()
    with sv.quiet_rdkit():
        assert "rdApp.error:disabled" in rdBase.LogStatus()
    assert rdBase.LogStatus() == before
