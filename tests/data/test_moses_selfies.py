"""moses_selfies built from a tiny MOSES-format folder, and the pad_tokens transform."""

import jax
import numpy as np
import pytest

pytest.importorskip("rdkit")
pytest.importorskip("selfies")

from jaxflows.chem import selfies_vocab as sv  # noqa: E402
from jaxflows.data.builders.moses import read_smiles_csv  # noqa: E402
from jaxflows.data.builders.moses_selfies import split_rows  # noqa: E402
from jaxflows.data.cli import prepare_command  # noqa: E402
from jaxflows.data.registry import dataset_info, load_source, prepare  # noqa: E402
from jaxflows.data.source_transforms import (  # noqa: E402
    TRANSFORMS,
    PaddedTokenSource,
    PadTokens,
    parse,
    transformed_spec,
)
from jaxflows.errors import ConfigError  # noqa: E402


@pytest.fixture
def built(tmp_path, selfies_moses_dir, selfies_smiles):
    """(data_dir, raw SMILES, split sizes) of moses_selfies built from the fixture folder."""
    data_dir = str(tmp_path / "data")
    sizes = prepare("moses_selfies", data_dir, source_path=selfies_moses_dir)
    return data_dir, selfies_smiles, sizes


def _expected(raw):
    """What the builder should keep, computed molecule by molecule."""
    rows = split_rows(len(raw["train"]), len(raw["test"]))
    conv = {name: [] for name in raw}
    reasons = {name: [] for name in raw}
    with sv.quiet_rdkit():
        for name, smiles in raw.items():
            for s in smiles:
                try:
                    conv[name].append(sv.smiles_to_tokens(s))
                    reasons[name].append(None)
                except sv.ConversionError as e:
                    conv[name].append(None)
                    reasons[name].append(e.reason)
    file, idx = rows["train"]
    vocab = sv.Vocabulary.from_sequences(conv[file][i][1] for i in idx if conv[file][i])
    kept, dropped = {}, {}
    for split, (file, idx) in rows.items():
        kept[split], counts = [], {}
        for i in idx:
            if conv[file][i] is None:
                counts[reasons[file][i]] = counts.get(reasons[file][i], 0) + 1
            elif vocab.unknown(conv[file][i][1]):
                counts["unknown_token"] = counts.get("unknown_token", 0) + 1
            else:
                kept[split].append(conv[file][i])
        dropped[split] = dict(sorted(counts.items()))
    return vocab, kept, dropped


def test_fixture_exercises_every_reason(built):
    _, raw, _ = built
    _, _, dropped = _expected(raw)
    assert dropped["train"] == {"rdkit_parse": 1, "selfies_encode": 1}
    assert dropped["validation"].get("unknown_token", 0) >= 1
    assert dropped["test"] == {"rdkit_parse": 1, "unknown_token": 1}


def test_splits_vocab_and_records(built):
    data_dir, raw, sizes = built
    vocab, kept, dropped = _expected(raw)
    assert sizes == {split: len(kept[split]) for split in ("train", "validation", "test")}
    info = dataset_info("moses_selfies", data_dir)
    assert info["prepared"] and info["splits"] == sizes
    meta = info["metadata"]
    # vocabulary: <start>, <stop>, then the sorted tokens of the *training* split only
    assert meta["vocab"] == list(vocab.tokens)
    assert meta["vocab"][:2] == ["<start>", "<stop>"]
    assert "[Se]" not in meta["vocab"]  # [Se] occurs only in validation / test rows
    assert meta["dropped"] == dropped
    assert meta["num_raw"] == {"train": 15, "validation": 15, "test": 6}
    lengths = [len(t) for split in kept.values() for _, t in split]
    assert meta["max_length"] == max(lengths)
    # element spec: tokens of variable length; the text field never enters a jitted step
    spec = info["element_spec"]
    assert set(spec) == {"tokens"}
    assert tuple(spec["tokens"].shape) == (None,) and np.dtype(spec["tokens"].dtype) == np.int32
    # records: token ids without <stop>, the canonical SMILES, in row order
    for split in ("train", "validation", "test"):
        src = load_source("moses_selfies", split, data_dir)
        assert len(src) == len(kept[split])
        for i, (canonical, tokens) in enumerate(kept[split]):
            rec = src[i]
            ids = np.asarray(rec["tokens"])
            assert ids.dtype == np.int32
            np.testing.assert_array_equal(ids, vocab.encode(tokens))
            assert sv.STOP_ID not in ids and sv.START_ID not in ids
            smiles = rec["smiles"].decode() if isinstance(rec["smiles"], bytes) else rec["smiles"]
            assert smiles == canonical
            assert vocab.decode(ids, canonical=True) == canonical


def test_same_rows_as_moses(built):
    """Train/validation/test come from the rows of the moses builder's split rule."""
    data_dir, raw, _ = built
    rows = split_rows(len(raw["train"]), len(raw["test"]))
    assert sorted(np.concatenate([rows["train"][1], rows["validation"][1]])) == list(range(30))
    src = load_source("moses_selfies", "validation", data_dir)
    with sv.quiet_rdkit():
        expect = [sv.canonical_smiles(raw["train"][i]) for i in rows["validation"][1]]
    got = [r["smiles"].decode() for r in src.__getitems__(list(range(len(src))))]
    assert all(s in expect for s in got)
    assert got == [s for s in expect if s in got]  # file order


def test_prepare_command_reports_dropped(built):
    data_dir, raw, _ = built
    _, _, dropped = _expected(raw)
    lines = prepare_command("moses_selfies", data_dir)
    assert lines[0].startswith("moses_selfies: train ")
    text = "\n".join(lines)
    assert "dropped from train: 2 (rdkit_parse 1, selfies_encode 1)" in text
    assert "dropped from test: 2 (rdkit_parse 1, unknown_token 1)" in text
    n_val = sum(dropped["validation"].values())
    assert f"dropped from validation: {n_val} (" in text
    assert "vocabulary " in text and "max_length " in text


def test_fixture_folder_is_in_the_moses_format(selfies_moses_dir, selfies_smiles):
    with open(f"{selfies_moses_dir}/train.csv.gz", "rb") as f:
        assert read_smiles_csv(f) == selfies_smiles["train"]


# --- pad_tokens ----------------------------------------------------------------------------


def test_pad_tokens_spec(built):
    data_dir, _, _ = built
    info = dataset_info("moses_selfies", data_dir)
    meta = info["metadata"]
    assert "pad_tokens" in TRANSFORMS
    t = parse("pad_tokens")
    assert isinstance(t, PadTokens) and t.length == 0 and t.field == "tokens"
    spec = transformed_spec([t], info["element_spec"], meta)
    L = meta["max_length"] + 1
    assert spec["tokens"] == jax.ShapeDtypeStruct((L,), np.int32)
    assert spec["length"] == jax.ShapeDtypeStruct((), np.int32)
    # an explicit length
    spec = transformed_spec([parse(f"pad_tokens(length={L + 5})")], info["element_spec"], meta)
    assert spec["tokens"].shape == (L + 5,)
    # too short for the data, or no max_length to default to: one clear error
    with pytest.raises(ConfigError, match=f"length={L - 1} is too short.*{L - 1} tokens"):
        transformed_spec([parse(f"pad_tokens(length={L - 1})")], info["element_spec"], meta)
    with pytest.raises(ConfigError, match="max_length"):
        transformed_spec([parse("pad_tokens")], info["element_spec"], {})
    with pytest.raises(ConfigError, match="no field 'seq'"):
        transformed_spec([parse("pad_tokens(field='seq')")], info["element_spec"], meta)
    with pytest.raises(ConfigError, match="variable shape"):  # without the transform
        transformed_spec([], info["element_spec"], meta)
    with pytest.raises(ConfigError, match="length"):
        PadTokens(length=-1)


def test_pad_tokens_source(built):
    data_dir, _, _ = built
    meta = dataset_info("moses_selfies", data_dir)["metadata"]
    L = meta["max_length"] + 1
    raw_src = load_source("moses_selfies", "train", data_dir)
    src = PadTokens().apply(raw_src, train=True, metadata=meta)
    assert isinstance(src, PaddedTokenSource) and len(src) == len(raw_src)
    for i in range(len(src)):
        rec, orig = src[i], np.asarray(raw_src[i]["tokens"])
        n = len(orig)
        assert rec["tokens"].shape == (L,) and rec["tokens"].dtype == np.int32
        np.testing.assert_array_equal(rec["tokens"][:n], orig)
        assert (rec["tokens"][n:] == sv.STOP_ID).all() and n < L  # at least one <stop>
        assert rec["length"] == n
        assert rec["smiles"] == raw_src[i]["smiles"]  # text passes through
    idx = [3, 0, 3, len(src) - 1]
    many = src.__getitems__(idx)
    batch = src.get_batch(np.asarray(idx))
    assert batch["tokens"].shape == (4, L) and batch["tokens"].dtype == np.int32
    assert batch["length"].shape == (4,) and batch["length"].dtype == np.int32
    assert batch["smiles"].shape == (4,)
    for j, rec in enumerate(many):
        np.testing.assert_array_equal(batch["tokens"][j], rec["tokens"])
        assert batch["length"][j] == rec["length"]
        assert batch["smiles"][j] == rec["smiles"]
    # the first <stop> sits at `length`
    first_stop = np.argmax(batch["tokens"] == sv.STOP_ID, axis=1)
    np.testing.assert_array_equal(first_stop, batch["length"])


def test_pad_tokens_in_the_pipeline(built):
    from jaxflows.data.pipeline import read_batch
    from jaxflows.train.input import materialize

    data_dir, _, _ = built
    meta = dataset_info("moses_selfies", data_dir)["metadata"]
    src = PadTokens().apply(load_source("moses_selfies", "validation", data_dir), train=False,
                            metadata=meta)
    assert materialize(src) is src  # get_batch: used as it is
    batch = read_batch(src, [0, 1])
    assert batch["tokens"].shape == (2, meta["max_length"] + 1)
    assert batch["length"].dtype == np.int32


class _ListSource:
    def __init__(self, seqs):
        self.seqs = seqs

    def __len__(self):
        return len(self.seqs)

    def __getitem__(self, i):
        return {"tokens": np.asarray(self.seqs[i], np.int32)}


def test_pad_tokens_too_long_is_an_error():
    src = PaddedTokenSource(_ListSource([[5, 6], [5, 6, 7, 8]]), length=4)
    np.testing.assert_array_equal(src[0]["tokens"], [5, 6, 1, 1])
    assert src[0]["length"] == 2
    with pytest.raises(ConfigError, match="sequence of 4 tokens does not fit length 4"):
        src[1]
    with pytest.raises(ConfigError, match="sequence of 4 tokens"):
        src.get_batch([0, 1])
    # exactly L - 1 tokens fit, leaving one <stop>
    ok = PaddedTokenSource(_ListSource([[5, 6, 7]]), length=4).get_batch([0])
    np.testing.assert_array_equal(ok["tokens"], [[5, 6, 7, 1]])
    np.testing.assert_array_equal(ok["length"], [3])
    # a list source without __getitems__ works too; an empty sequence is all <stop>
    empty = PaddedTokenSource(_ListSource([[]]), length=3)
    np.testing.assert_array_equal(empty.get_batch([0])["tokens"], [[1, 1, 1]])
