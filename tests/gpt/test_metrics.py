"""What a run shows and leaves behind: progress lines, loss.png with both curves, summary.json."""
import json

import numpy as np
import pytest
from matplotlib.image import imread

from gpt.build import build_run
from gpt.config import load_config
from gpt.metrics import MetricsLogger
from gpt.mfu import MFU, Peak
from gpt.plot import TRAIN_COLOR, VAL_COLOR, plot_losses
from gpt.summary import format_duration
from gpt.trainer import Trainer
from tests.conftest import tiny_argv

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def pixels_of(png, hex_color: str) -> int:
    """How many pixels of the image are (within antialiasing noise) exactly this colour."""
    rgb = np.array([int(hex_color[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    image = imread(png)[..., :3]
    return int((np.abs(image - rgb) < 0.02).all(axis=-1).sum())


def test_plot_is_a_png_with_a_train_and_a_val_curve(tmp_path):
    steps = [(i, 4.0 * 0.99**i) for i in range(0, 200, 10)]
    evals = [(i, 4.0 * 0.99**i + 0.05) for i in range(0, 201, 50)]
    both = plot_losses(tmp_path / "both.png", steps, evals, [(i, v + 0.1) for i, v in evals], "test")
    assert both.read_bytes()[:8] == PNG_SIGNATURE
    assert pixels_of(both, TRAIN_COLOR) > 200 and pixels_of(both, VAL_COLOR) > 200
    # the colour check can tell a missing curve: without val data there is no orange at all
    train_only = plot_losses(tmp_path / "train.png", steps, evals, [], "test")
    assert pixels_of(train_only, TRAIN_COLOR) > 200 and pixels_of(train_only, VAL_COLOR) == 0
    assert not list(tmp_path.glob(".*tmp"))


def logger(tmp_path, **kw):
    mfu = MFU(flops_per_token=1000, peak=Peak(1e9, "test peak"), world_size=1)
    return MetricsLogger(tmp_path, {}, max_iters=10, tokens_per_iter=64, mfu=mfu, **kw)


def test_summary_has_the_best_val_loss_tokens_and_steady_throughput(tmp_path, capsys):
    m = logger(tmp_path)
    m.eval(0, 4.0, 4.1)
    m.train(0, 4.0, 1e-3, 1000.0, 64.0)  # the first step pays for warm-up: left out of the mean
    for it in (1, 2, 3):
        m.train(it, 3.5, 1e-3, 10.0, 6400.0)
    m.eval(4, 3.0, 3.2)
    m.eval(8, 3.1, 3.3)
    summary = m.finish(iters=8, wall_s=2.0, checkpoint=tmp_path / "ckpt.pt")
    m.close()
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert (summary["best_val_loss"], summary["best_val_iter"], summary["last_val_loss"]) == (3.2, 4, 3.3)
    assert summary["tokens_seen"] == 8 * 64
    assert summary["mean_tokens_per_s"] == pytest.approx(6400.0)
    assert summary["mean_mfu"] == pytest.approx(6400.0 * 1000 / 1e9)
    assert summary["checkpoint"].endswith("ckpt.pt") and summary["loss_plot"].endswith("loss.png")
    printed = capsys.readouterr().out
    assert "iter 3/10: loss 3.5000" in printed and "MFU 0.64%" in printed and "ETA" in printed
    assert "== eval at iter 4: train loss 3.0000, val loss 3.2000 (best so far)" in printed
    assert "val loss 3.3000 (best 3.2000)" in printed
    assert "best val loss 3.2000 at iter 4" in printed


def test_a_record_replaces_those_at_its_iteration_and_after(tmp_path):
    m = logger(tmp_path)
    for it in range(5):
        m.train(it, 4.0, 1e-3, 10.0, 100.0)
    m.train(2, 3.0, 1e-3, 10.0, 100.0)  # e.g. the loop went back to a checkpoint
    m.close()
    assert sorted(m.train_steps) == [0, 1, 2] and m.train_steps[2]["loss"] == 3.0


def test_durations_read_well():
    assert [format_duration(s) for s in (0.84, 42.4, 185, 3725)] == ["0.8s", "42s", "3m05s", "1h02m"]


def test_a_training_run_leaves_a_plot_and_a_summary_and_resumes_its_history(tiny_data, tmp_path, capsys):
    Trainer(build_run(load_config(tiny_argv(tiny_data, tmp_path, max_iters=4)))).run()
    first = capsys.readouterr().out
    assert "ETA" in first and "MFU" in first and "== eval at iter 4" in first and "== run summary" in first
    assert (tmp_path / "loss.png").read_bytes()[:8] == PNG_SIGNATURE
    resumed = Trainer(build_run(load_config(tiny_argv(tiny_data, tmp_path, max_iters=8, init_from="resume"))))
    resumed.run()
    assert sorted(resumed.metrics.evals) == [0, 4, 8] and sorted(resumed.metrics.train_steps) == list(range(8))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["iters"] == 8 and summary["tokens_seen"] == 8 * 4 * 16
    assert summary["best_val_iter"] in (0, 4, 8) and summary["checkpoint"]
