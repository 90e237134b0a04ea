"""Training curves: metrics.jsonl parsing and the PNG figure."""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxflows.errors import UserError
from jaxflows.train import curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_run(workdir, *, steps_per_epoch=10, num_steps=60, eval_every=20, val_keys=("loss",),
               resumed=False, truncated=True, loss_scale=1.0):
    """A synthetic metrics.jsonl in the format MetricsWriter writes."""
    os.makedirs(workdir, exist_ok=True)
    rows = []
    for step in range(5, num_steps + 1, 5):
        rows.append({"step": step, "loss": loss_scale * 100.0 / step, "learning_rate": 1e-3,
                     "grad_norm": 1.5, "epoch": step / steps_per_epoch, "steps_per_s": 3.0,
                     "examples_per_s": 96.0})
        if step % eval_every == 0:
            val = {"val_" + k: 2.0 + 10.0 / step for k in val_keys}
            rows.append({"step": step, **val, "val_epoch": step / steps_per_epoch})
    if resumed:  # a resumed run re-logs steps 25..40 with different numbers
        for step in range(25, 45, 5):
            rows.append({"step": step, "loss": -1.0, "epoch": step / steps_per_epoch})
        rows.append({"step": 40, "val_loss": -2.0, "val_epoch": 40 / steps_per_epoch})
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if truncated:
        text += '{"step": 65, "loss": 0.9, "epo'  # killed mid-write
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.write(text)
    return str(workdir)


def _check_png(path, *, min_w=300, min_h=200):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG"
        w, h = im.size
    assert min_w <= w <= 4000 and min_h <= h <= 4000
    assert not os.path.exists(path + ".tmp.png")
    return w, h


def test_read_metrics_skips_truncated_line_and_last_step_wins(tmp_path):
    wd = _write_run(tmp_path / "run", resumed=True, truncated=True)
    m = curves.read_metrics(wd)
    assert "step" not in m
    steps, loss = m["loss"]
    np.testing.assert_array_equal(steps, np.arange(5, 61, 5))  # sorted, unique, no step 65
    assert steps.dtype == np.int64 and loss.dtype == np.float64
    for s, v in zip(steps, loss):
        assert v == (-1.0 if 25 <= s <= 40 else 100.0 / s)
    vsteps, vloss = m["val_loss"]
    np.testing.assert_array_equal(vsteps, [20, 40, 60])
    np.testing.assert_allclose(vloss, [2.5, -2.0, 2.0 + 10 / 60])
    np.testing.assert_allclose(m["val_epoch"][1], [2.0, 4.0, 6.0])
    assert set(m) >= {"epoch", "learning_rate", "grad_norm", "examples_per_s"}


def test_read_metrics_nonfinite_strings_and_junk(tmp_path):
    lines = [
        json.dumps({"step": 1, "loss": "nan", "note": "hello", "flag": True}),
        "",
        "not json at all",  # a corrupt middle line is skipped too (with a warning)
        json.dumps([1, 2]),
        json.dumps({"loss": 3.0}),  # no step
        json.dumps({"step": 2, "loss": "inf", "val_loss": "-inf"}),
        json.dumps({"step": 3, "loss": 1}),
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    m = curves.read_metrics(str(tmp_path))
    assert set(m) == {"loss", "val_loss"}
    steps, loss = m["loss"]
    np.testing.assert_array_equal(steps, [1, 2, 3])
    assert np.isnan(loss[0]) and loss[1] == np.inf and loss[2] == 1.0
    assert m["val_loss"][1][0] == -np.inf


def test_read_metrics_empty_file(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    assert curves.read_metrics(str(tmp_path)) == {}


def test_missing_metrics_is_a_user_error(tmp_path):
    with pytest.raises(UserError) as e:
        curves.read_metrics(str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path) in msg and "metrics.jsonl" in msg and "\n" not in msg
    with pytest.raises(UserError, match="no metrics.jsonl"):
        curves.plot_curves([str(tmp_path / "nope")], str(tmp_path / "c.png"))


def test_plot_one_run(tmp_path):
    wd = _write_run(tmp_path / "run_a", val_keys=("loss", "bpd"), resumed=True)
    out = str(tmp_path / "figs" / "one.png")  # parent created on demand
    assert curves.plot_curves([wd], out) == out
    w, h = _check_png(out)
    assert w > h  # three panels in a row: loss, val_bpd, val_loss


def test_plot_two_runs_and_epoch_axis(tmp_path):
    a = _write_run(tmp_path / "a" / "run", val_keys=("loss", "bpd"))
    # Different val metrics (union), a different step/epoch ratio, a loss spanning > 2 decades.
    b = _write_run(tmp_path / "b" / "run", steps_per_epoch=7, num_steps=200,
                   val_keys=("loss", "nll"), truncated=False, loss_scale=100.0)
    out = str(tmp_path / "two.png")
    assert curves.plot_curves([a, b], out) == out
    _check_png(out)
    out_e = str(tmp_path / "two_epoch.png")
    assert curves.plot_curves([a, b], out_e, x="epoch") == out_e
    _check_png(out_e)
    assert curves._labels([a, b]) == [os.path.join("a", "run"), os.path.join("b", "run")]


def test_plot_many_panels_wrap_into_rows(tmp_path):
    wd = _write_run(tmp_path / "run", val_keys=("loss", "bpd", "nll", "kl", "elbo"))
    out = str(tmp_path / "many.png")
    curves.plot_curves([wd], out)
    w, h = _check_png(out)
    assert h > 400  # 6 panels -> 2 rows of 3


def test_plot_user_errors(tmp_path):
    wd = _write_run(tmp_path / "run")
    with pytest.raises(UserError, match="against"):
        curves.plot_curves([wd], str(tmp_path / "x.png"), x="time")
    with pytest.raises(UserError):
        curves.plot_curves([], str(tmp_path / "x.png"))
    no_epoch = tmp_path / "no_epoch"
    no_epoch.mkdir()
    (no_epoch / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    with pytest.raises(UserError, match="epoch"):
        curves.plot_curves([str(no_epoch)], str(tmp_path / "x.png"), x="epoch")
    curves.plot_curves([str(no_epoch)], str(tmp_path / "ok.png"))  # step axis, no top axis
    _check_png(str(tmp_path / "ok.png"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("")
    with pytest.raises(UserError, match="no loss"):
        curves.plot_curves([str(empty)], str(tmp_path / "x.png"))
    assert not os.path.exists(tmp_path / "x.png")


def test_log_scale_rule():
    assert curves._use_log([np.array([1e-3, 1.0]), np.array([0.5, np.nan])])
    assert not curves._use_log([np.array([0.5, 10.0])])  # < 2 decades
    assert not curves._use_log([np.array([-1.0, 1000.0])])  # not all positive
    assert not curves._use_log([np.array([1.0])])


def test_write_run_curves(tmp_path):
    wd = _write_run(tmp_path / "run")
    assert curves.write_run_curves(wd) == os.path.join(wd, "curves.png")
    _check_png(os.path.join(wd, "curves.png"))


def test_write_run_curves_never_raises(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert curves.write_run_curves(str(tmp_path / "missing")) is None
    assert "curves" in caplog.text
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.jsonl").write_text("{{{\n")
    assert curves.write_run_curves(str(broken)) is None
    # curves.png exists as a directory: the final replace fails, the tmp file is cleaned up.
    wd = _write_run(tmp_path / "dir_out")
    os.mkdir(os.path.join(wd, "curves.png"))
    os.mkdir(os.path.join(wd, "curves.png", "x"))
    assert curves.write_run_curves(wd) is None
    assert not os.path.exists(os.path.join(wd, "curves.png.tmp.png"))


def test_import_train_does_not_import_matplotlib():
    code = ("import sys, jaxflows.train, jaxflows.train.curves; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
