"""Guacamol objectives on RDKit: definitions, known values, invalid input, worker independence.

Known values are derived by hand from the benchmark definitions (guacamol 0.5.5,
``standard_benchmarks.py``; Brown et al., 2019): a Gaussian modifier at its mean is 1, a
molecule's Tanimoto similarity to itself is 1, a geometric mean with a zero factor is 0, etc.
"""

import math

import numpy as np
import pytest

pytest.importorskip("rdkit")
pytest.importorskip("selfies")

from jaxflows.chem import guacamol as g  # noqa: E402
from jaxflows.chem import scoring as sc  # noqa: E402
from jaxflows.errors import UserError  # noqa: E402

IDS = ("med1", "med2", "pdop", "osmb", "adip", "siga", "zale", "valt", "dhop", "shop", "rano",
       "fexo")

# a few MOSES-like molecules
MOLS = [
    "CC1C2CCC(C2)C1CN(CCO)C(=O)c1ccc(Cl)cc1",
    "COc1ccc(-c2cc(=O)c3c(O)c(OC)c(OC)cc3o2)cc1O",
    "CCOC(=O)c1ccc(NC(=O)c2ccc(F)cc2)cc1",
    "Cc1ccc(S(=O)(=O)N2CCC(C(=O)NCc3ccco3)CC2)cc1",
    "O=C(Nc1ccc2c(c1)OCO2)c1cccs1",
    "CC(C)Cc1ccc(C(C)C(=O)O)cc1",
    "CN1CCN(c2ccc(C(F)(F)F)cc2)CC1",
    "Cc1nc2ccccc2n1Cc1ccc(C#N)cc1",
]


def one(task, smiles):
    return float(g.score(task, [smiles], num_workers=1)[0])


def test_task_ids_and_functions():
    assert tuple(g.TASKS) == IDS
    pairs = {t.id: t.function for t in g.TASKS.values()}
    assert pairs == {
        "med1": "median_camphor_menthol", "med2": "median_tadalafil_sildenafil",
        "pdop": "perindopril_rings", "osmb": "hard_osimertinib", "adip": "amlodipine_rings",
        "siga": "sitagliptin_replacement", "zale": "zaleplon_with_other_formula",
        "valt": "valsartan_smarts", "dhop": "decoration_hop", "shop": "scaffold_hop",
        "rano": "ranolazine_mpo", "fexo": "hard_fexofenadine"}
    assert set(g.NFBO_TASKS) <= set(IDS) and len(g.NFBO_TASKS) == 7


@pytest.mark.parametrize("task", IDS)
def test_invalid_and_empty_smiles_are_corrupt(task):
    bad = ["", "xyz", "C1CC", "c1cccc1", "C(C)(C)(C)(C)C", "(", " ", None]
    out = g.score(task, bad, num_workers=1)
    assert out.dtype == np.float64 and out.shape == (len(bad),)
    np.testing.assert_array_equal(out, -1.0)


@pytest.mark.parametrize("task", IDS)
def test_valid_scores_are_in_unit_interval(task):
    out = g.score(task, MOLS, num_workers=1)
    assert out.dtype == np.float64 and out.shape == (len(MOLS),)
    assert np.all((out >= 0) & (out <= 1))


def test_unknown_task_is_one_line_error():
    with pytest.raises(UserError) as e:
        g.score("nope", ["CCO"])
    msg = str(e.value)
    assert "\n" not in msg and "nope" in msg
    for i in IDS:
        assert i in msg


# ------------------------------------------------------------------ modifiers by hand


def test_modifiers_by_hand():
    gauss = sc.Gaussian(3, 0.5)
    assert gauss(3) == 1.0
    assert math.isclose(gauss(3.5), math.exp(-0.5))
    assert math.isclose(gauss(2), math.exp(-2.0))
    mn, mx = sc.MinGaussian(1, 1), sc.MaxGaussian(100, 10)
    assert mn(-5) == 1.0 and mn(1) == 1.0 and math.isclose(mn(2), math.exp(-0.5))
    assert mx(150) == 1.0 and mx(100) == 1.0 and math.isclose(mx(90), math.exp(-0.5))
    clip = sc.Clipped(upper_x=0.8)
    assert clip(0.9) == 1.0 and clip(0.8) == 1.0 and clip(0.0) == 0.0
    assert math.isclose(clip(0.4), 0.5)
    assert sc.ThresholdedLinear(0.5)(0.25) == 0.5 and sc.ThresholdedLinear(0.5)(2.0) == 1.0
    assert sc.parse_formula("C16H15F6N5O") == [("C", 16), ("H", 15), ("F", 6), ("N", 5),
                                               ("O", 1)]


def test_formula_score_by_hand():
    from rdkit.Chem.rdMolDescriptors import CalcMolFormula

    formula = sc.Formula("C19H17N3O2")
    isomer = sc.parse("CC(=O)Nc1ccc(C(=O)Nc2ccc3ccccc3n2)cc1C")
    assert CalcMolFormula(isomer) == "C19H17N3O2"
    assert formula(isomer) == 1.0  # every Gaussian at its mean
    # one carbon too many: C term exp(-1/2), total (42 vs 41 atoms, sigma 2) exp(-1/8),
    # geometric mean of five terms -> exp(-1/8)
    extra_c = sc.parse("O=C(Nc1ccc(NC(=O)c2ccccc2)cc1)c1cccnc1C")
    assert CalcMolFormula(extra_c) == "C20H17N3O2"
    assert formula(extra_c) == pytest.approx(math.exp(-0.125), rel=1e-12)
    assert sc.Formula("C19H17N3O2", mean="arithmetic")(extra_c) == pytest.approx(
        (math.exp(-0.5) + 3 + math.exp(-0.125)) / 5, rel=1e-12)


# ------------------------------------------------------------------ each task's own molecules


def test_median_tasks_at_their_targets():
    # similarity of a target to itself is 1, so the geometric mean is sqrt(sim to the other)
    for task, (a, b), fp in (("med1", (g.CAMPHOR, g.MENTHOL), "ECFP4"),
                             ("med2", (g.TADALAFIL, g.SILDENAFIL), "ECFP6")):
        sim = sc.Similarity(b, fp)(sc.parse(a))
        assert 0 < sim < 1
        assert math.isclose(one(task, a), math.sqrt(sim), rel_tol=1e-12)
        assert math.isclose(one(task, b), math.sqrt(sim), rel_tol=1e-12)
    assert one("med1", g.MENTHOL) == pytest.approx(0.4, abs=1e-12)  # ECFP4 Tanimoto 0.16


def test_similarity_to_itself_is_one_for_every_fingerprint():
    mol = sc.parse(g.RANOLAZINE)
    for fp in sc.FINGERPRINTS:
        assert sc.Similarity(g.RANOLAZINE, fp)(mol) == 1.0
    # a different spelling of the same molecule is the same molecule
    other = sc.parse("Cc1cccc(C)c1NC(=O)CN1CCN(CC(O)COc2ccccc2OC)CC1")
    for fp in sc.FINGERPRINTS:
        assert sc.Similarity(g.RANOLAZINE, fp)(other) == 1.0


def test_perindopril_amlodipine_at_their_targets():
    # perindopril has no aromatic ring: Gaussian(mu=2, sigma=0.5) at 0 is exp(-8)
    assert one("pdop", g.PERINDOPRIL) == pytest.approx(math.sqrt(math.exp(-8.0)), rel=1e-12)
    # amlodipine has 2 rings: Gaussian(mu=3, sigma=0.5) at 2 is exp(-2)
    assert one("adip", g.AMLODIPINE) == pytest.approx(math.sqrt(math.exp(-2.0)), rel=1e-12)


def test_osimertinib_at_its_target():
    from rdkit.Chem import Descriptors

    mol = sc.parse(g.OSIMERTINIB)
    tpsa, logp = Descriptors.TPSA(mol), Descriptors.MolLogP(mol)
    # similarity 1: clipped FCFP4 term 1, ECFP6 term MinGaussian(0.85, 0.1)(1) = exp(-1.125)
    expect = (1.0 * math.exp(-1.125) * sc.MaxGaussian(100, 10)(tpsa)
              * sc.MinGaussian(1, 1)(logp)) ** 0.25
    assert one("osmb", g.OSIMERTINIB) == pytest.approx(expect, rel=1e-12)


def test_sitagliptin_at_its_target():
    # logP and TPSA terms are 1, formula term is 1 (its own formula), similarity term
    # Gaussian(0, 0.1)(1) = exp(-50)
    assert one("siga", g.SITAGLIPTIN) == pytest.approx(math.exp(-50.0) ** 0.25, rel=1e-9)


def test_zaleplon_at_its_target():
    from rdkit.Chem.rdMolDescriptors import CalcMolFormula

    assert CalcMolFormula(sc.parse(g.ZALEPLON)) == "C17H15N5O"
    expect = math.sqrt(sc.Formula("C19H17N3O2")(sc.parse(g.ZALEPLON)))
    assert one("zale", g.ZALEPLON) == pytest.approx(expect, rel=1e-12)


def test_valsartan_smarts_gate():
    # without the SMARTS the geometric mean has a zero factor
    assert one("valt", g.SITAGLIPTIN_VALT) == 0.0
    assert all(v == 0.0 for v in g.score("valt", MOLS, num_workers=1))
    # with it, the score is the geometric mean of the three property Gaussians
    mol = "CN(C=O)Cc1ccc(-c2ccccc2)cc1"
    assert sc.Smarts(g.VALSARTAN_SMARTS)(sc.parse(mol)) == 1.0
    assert one("valt", mol) > 0.0


def test_hop_tasks_at_the_start_molecule():
    # the start molecule keeps its decorations and scaffold: similarity 1 (clipped to 1)
    # deco hop: [1, 0 (has the sulfone), 0 (has the amine-benzothiazole), 1] -> 0.5
    assert one("dhop", g.HOP_START) == 0.5
    # scaffold hop: [1, 1 (keeps the decoration), 0 (keeps the scaffold)] -> 2/3
    assert one("shop", g.HOP_START) == pytest.approx(2 / 3, abs=1e-15)


def test_mpo_reference_drugs_score_high():
    # ranolazine: similarity 1 (clipped), logP MaxGaussian(7, 1), no F -> exp(-0.5), TPSA
    from rdkit.Chem import Descriptors

    mol = sc.parse(g.RANOLAZINE)
    expect = (1.0 * sc.MaxGaussian(7, 1)(Descriptors.MolLogP(mol)) * math.exp(-0.5)
              * sc.MaxGaussian(95, 20)(Descriptors.TPSA(mol))) ** 0.25
    assert one("rano", g.RANOLAZINE) == pytest.approx(expect, rel=1e-12)
    # fexofenadine: similarity 1, TPSA MaxGaussian(90, 10), logP MinGaussian(4, 1)
    mol = sc.parse(g.FEXOFENADINE)
    expect = (sc.MaxGaussian(90, 10)(Descriptors.TPSA(mol))
              * sc.MinGaussian(4, 1)(Descriptors.MolLogP(mol))) ** (1 / 3)
    assert one("fexo", g.FEXOFENADINE) == pytest.approx(expect, rel=1e-12)
    # fexofenadine's task keeps it close (similarity 1) and only nudges TPSA and logP: it
    # scores above every MOSES-like molecule (the other MPO tasks penalise their reference
    # drug's own ring count, logP or too-high similarity, by design)
    assert one("fexo", g.FEXOFENADINE) > g.score("fexo", MOLS, num_workers=1).max()


def test_spelling_does_not_change_the_score():
    from rdkit import Chem

    for task in IDS:
        for s in MOLS[:3]:
            m = Chem.MolFromSmiles(s)
            variants = [Chem.MolToSmiles(m, doRandom=True, canonical=False) for _ in range(2)]
            ref = one(task, s)
            for v in variants:
                assert one(task, v) == pytest.approx(ref, abs=1e-12), (task, s, v)


def test_objective_score_matches_batch():
    obj = g.objective("med1")
    assert obj.score(MOLS[0]) == g.score("med1", MOLS[:1], num_workers=1)[0]
    assert obj.score("") == -1.0


# ------------------------------------------------------------------ workers


def test_results_do_not_depend_on_the_worker_count():
    from rdkit import Chem

    rng = np.random.default_rng(0)
    smiles = []
    for i in range(160):
        m = Chem.MolFromSmiles(MOLS[i % len(MOLS)])
        smiles.append(Chem.MolToSmiles(m, doRandom=True, canonical=False) if i % 3 else
                      MOLS[i % len(MOLS)])
    smiles[5], smiles[77] = "", "not a smiles"
    smiles = [smiles[i] for i in rng.permutation(len(smiles))]
    for task in ("osmb", "zale", "dhop"):
        one_proc = g.score(task, smiles, num_workers=1)
        two = g.score(task, smiles, num_workers=2, min_parallel=1, chunk_size=7)
        np.testing.assert_array_equal(one_proc, two)
        assert np.sum(two == -1.0) == 2


def test_fingerprints_equal_the_legacy_rdkit_functions():
    # the package calls AllChem.GetMorganFingerprint / GetAtomPairFingerprint (deprecated in
    # RDKit); the generators used here must give the same count vectors
    from rdkit.Chem import AllChem

    from jaxflows.chem.selfies_vocab import quiet_rdkit

    if not hasattr(AllChem, "GetMorganFingerprint"):
        pytest.skip("this RDKit no longer has the legacy fingerprint functions")
    legacy = {
        "ECFP4": lambda m: AllChem.GetMorganFingerprint(m, 2),
        "ECFP6": lambda m: AllChem.GetMorganFingerprint(m, 3),
        "FCFP4": lambda m: AllChem.GetMorganFingerprint(m, 2, useFeatures=True),
        "FCFP6": lambda m: AllChem.GetMorganFingerprint(m, 3, useFeatures=True),
        "AP": lambda m: AllChem.GetAtomPairFingerprint(m, maxLength=10),
    }
    with quiet_rdkit():
        for s in MOLS + [g.OSIMERTINIB, g.RANOLAZINE, g.AMLODIPINE]:
            mol = sc.parse(s)
            for fp, old in legacy.items():
                assert (sc.fingerprint(mol, fp).GetNonzeroElements()
                        == old(mol).GetNonzeroElements()), (fp, s)
