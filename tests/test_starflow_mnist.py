"""experiments/starflow_mnist.py ``--quick`` end to end on the embedded 8 x 8 digits: classifier,
KL autoencoder, fine-tuned decoder, STARFlow and the pixel TarFlow trained for calibrated equal
time, the guidance sweep with both rules, the speed comparisons, the decoders; the results
schema with provenance, and a rerun that reuses every stage."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest


@pytest.fixture(scope="module")
def script(load_repo_module):
    return load_repo_module("experiments/starflow_mnist.py")


def test_helpers(script):
    assert script.balanced_labels(25).tolist() == [i % 10 for i in range(25)]
    entries = [{"rule": "a", "weight": 0.0, "fd_mnist": 3.0},
               {"rule": "a", "weight": 1.0, "fd_mnist": 1.0},
               {"rule": "b", "weight": 1.0, "fd_mnist": 0.5}]
    assert script.best_of(entries)["rule"] == "b"
    assert script.best_of(entries, "a")["weight"] == 1.0
    assert script.best_of(entries, "c") is None
    args = script.parse_args(["--quick", "--runs_dir", "R"])
    assert args.dataset == "digits" and args.weight_values == [0.0, 5.0]
    assert args.ae_workdir == os.path.join("R", "ae")
    assert args.classifier == os.path.join("R", "classifier", "params.msgpack")
    full = script.parse_args([])
    assert full.weight_values == [0.0, 0.5, 1.0, 2.0, 3.0, 5.0]
    assert full.num_samples == 10_000 and full.speed_batch_values == [16, 1000]
    with pytest.raises(SystemExit):
        script.parse_args(["--num_samples", "100", "--sample_batch", "30"])


def test_time_sampler_fills_min_seconds_and_takes_the_median(script):
    import time

    import jax

    delays = iter([0.0, 0.005, 0.005, 0.5] + [0.005] * 100)  # the warm-up first

    def fn(key, labels):
        time.sleep(next(delays))
        return jax.numpy.zeros(len(labels))

    mesh = jax.make_mesh((1,), ("data",))
    t = script.time_sampler(fn, np.zeros(4, np.int32), reps=2, seed=0, mesh=mesh,
                            min_seconds=0.6)
    assert t["reps"] >= 4  # 2 calls are ~0.01 s, 3 calls ~0.51 s: more until 0.6 s
    assert t["call_s"] < 0.05 and t["call_s_mean"] > t["call_s"]  # the median: not the slow one
    assert t["images_per_s"] == pytest.approx(4 / t["call_s"])


@pytest.mark.slow
def test_starflow_mnist_quick(script, tmp_path):
    out = tmp_path / "results" / "starflow_mnist.json"
    argv = ["--quick", "--runs_dir", str(tmp_path / "runs"), "--out", str(out),
            "--data_dir", str(tmp_path / "data")]
    results = script.main(argv)
    saved = json.loads(out.read_text())
    for key in ("command", "git_commit", "machine", "machine_info", "wall_time_s", "timings",
                "protocol", "rows", "checks", "guidance_rows", "speed_rows", "decoder_rows",
                "calibration", "decoder_finetune", "classifier"):
        assert key in saved, key
    rows = {r["name"]: r for r in saved["rows"]}
    assert set(rows) == {"starflow", "tarflow_pixel", "starflow_uniform"}
    weights = [0.0, 5.0]
    for name in ("starflow", "tarflow_pixel"):
        r = rows[name]
        for key in ("params", "train_wall_time_s", "sample_images_per_s"):
            assert r[key] > 0, (name, key)
        rules = ("starflow", "tarflow") if name == "starflow" else ("tarflow",)
        assert sorted((e["rule"], e["weight"]) for e in r["guidance"]) == sorted(
            (rule, w) for rule in rules for w in weights)
        for e in r["guidance"]:
            assert np.isfinite(e["fd_mnist"]) and e["fd_mnist"] >= 0
            assert 0.0 <= e["class_accuracy"] <= 1.0
            assert e["images_per_s"] > 0 and e["num_samples"] == 40
        assert r["best_fd_mnist"] == min(e["fd_mnist"] for e in r["guidance"])
    # the frozen autoencoder is counted apart from STARFlow's parameters
    assert rows["starflow"]["params_frozen_autoencoder"] > 0
    assert rows["tarflow_pixel"]["params_frozen_autoencoder"] == 0
    assert rows["starflow_uniform"]["train_wall_time_s"] is None
    for name in ("starflow", "tarflow_pixel"):
        tr = rows[name]["trained"]
        assert tr["train_steps_per_s_median"] > 0
        assert tr["train_time_at_median_rate_s"] == pytest.approx(
            rows[name]["train_steps"] / tr["train_steps_per_s_median"])
    # w = 0 is one computation for both STARFlow rules
    w0 = {e["rule"]: e["fd_mnist"] for e in rows["starflow"]["guidance"] if e["weight"] == 0}
    assert w0["starflow"] == w0["tarflow"]
    calib = saved["calibration"]
    assert calib["starflow_steps"] == 30 and calib["tarflow_pixel_steps"] >= 1
    assert rows["tarflow_pixel"]["train_steps"] == calib["tarflow_pixel_steps"]
    speed = {(s["model"], s["sampler"], s["path"]) for s in saved["speed_rows"]}
    assert speed == {("starflow", "sequential", "image"),
                     ("starflow_uniform", "sequential", "image"),
                     ("starflow", "jacobi", "image"), ("tarflow_pixel", "sequential", "image"),
                     ("starflow", "sequential", "flow"), ("starflow_uniform", "sequential", "flow"),
                     ("tarflow_latent_4x6", "sequential", "flow"),
                     ("tarflow_latent_8x8", "sequential", "flow")}
    assert all(s["images_per_s"] > 0 and s["compile_s"] >= 0 for s in saved["speed_rows"])
    # the latent TarFlow baselines: their parameter counts are checked against STARFlow's
    latent = {s["model"]: s for s in saved["speed"] if s["model"].startswith("tarflow_latent")}
    assert all(s["params"] > 0 and "patch 1" in s["layout"] for s in latent.values())
    assert {(d["decoder"], d["score_denoise"]) for d in saved["decoder_rows"]} == {
        ("original", True), ("original", False), ("finetuned", True), ("finetuned", False)}
    # the decoder comparison redraws the sweep's latents: original + denoiser is the sweep entry
    best = rows["starflow"]["guidance"]
    dec = {(d["decoder"], d["score_denoise"]): d for d in saved["decoder_rows"]}
    same = [e for e in best if e["rule"] == "starflow"
            and e["weight"] == dec["original", True]["weight"]][0]
    assert dec["original", True]["fd_mnist"] == pytest.approx(same["fd_mnist"], rel=1e-3)
    ratio = saved["guidance_ratio_rows"]
    assert [e["weight"] for e in ratio] == [5.0] and ratio[0]["num_samples"] == 20
    assert 0.0 < ratio[0]["s_mean"] <= 1.0
    assert 0.0 < ratio[0]["w_eff_mean"] <= 5.0 + 1e-6
    assert ratio[0]["sigma_ratio_p10"] <= ratio[0]["sigma_ratio_median"] \
        <= ratio[0]["sigma_ratio_p90"]
    checks = {c["check"]: c for c in saved["checks"]}
    assert any("effective weight" in c for c in checks)
    assert any("deep-shallow / uniform" in c for c in checks)
    target = [c for c in checks.values() if c["target"] == ">= 1.8"]
    assert len(target) == 1 and "tarflow_latent_4x6" in target[0]["check"]
    assert "parameters tarflow_latent_8x8 / starflow" in checks
    assert any("w=5" in c and "starflow rule" in c for c in checks)
    md = (tmp_path / "results" / "starflow_mnist.md").read_text()
    assert md.count("\n|") >= 10
    assert (tmp_path / "results" / "starflow_mnist_samples.png").exists()

    # stage 2 is experiments/starflow_decoder_finetune.py end to end (its own e2e test)
    ft = json.loads((tmp_path / "runs" / "decoder" / "starflow_decoder.json").read_text())
    for key in ("command", "git_commit", "machine", "machine_info", "wall_time_s", "timings",
                "protocol", "classifier", "autoencoder", "finetune", "latent_scale",
                "fd_mnist_train_vs_test"):
        assert key in ft, key
    assert [(r["decoder"], r["latents"]) for r in ft["rows"]] == [
        ("original", "clean"), ("original", "noisy"), ("finetuned", "clean"),
        ("finetuned", "noisy")]
    assert all(np.isfinite(r[k]) for r in ft["rows"] for k in ("mse", "psnr", "fd_mnist"))
    assert ft["encoder_unchanged"] is True  # optim.freeze kept the encoder bitwise
    assert ft["sigma_l"] == 0.3 and ft["latent_scale"] > 0 and ft["autoencoder"]["kind"] == "kl"
    assert ft["finetune"]["perceptual_weight"] > 0 and ft["finetune"]["gan_weight"] == 0
    curves = ft["finetune"]["curves"]
    assert curves["val"] and curves["train"]
    assert all(v[curves["val_columns"].index("noisy_mse")] is not None for v in curves["val"])
    by = {(r["decoder"], r["latents"]): r for r in ft["rows"]}
    assert by["original", "noisy"]["mse"] > by["original", "clean"]["mse"]
    assert (tmp_path / "runs" / "decoder" / "starflow_decoder.md").exists()

    # a rerun reuses every stage: the same rows
    again = script.main(argv)
    assert again["rows"] == json.loads(json.dumps(results["rows"]))
    # the rerun keeps the first invocation's provenance and timings
    (first,) = json.loads(out.read_text())["earlier_invocations"]
    assert first["timings"] == saved["timings"] and first["command"] == saved["command"]
