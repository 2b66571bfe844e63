"""Training-curve PNGs (training/plots.py), including a run with nothing to validate (an MLM stage 0)."""

import warnings

from PIL import Image

from mtl_ray.training.plots import plot_history


def test_supervised_history_plots_losses_and_metrics(tmp_path):
    history = [
        {"step": 10, "loss/a": 0.9, "loss/b": 1.2},
        {"step": 20, "loss/a": 0.7, "val/a/accuracy": 0.6, "val/aggregate": 0.6},
    ]
    out = plot_history(history, tmp_path / "curves.png")
    assert out == tmp_path / "curves.png" and Image.open(out).size == (1320, 495)


def test_unsupervised_only_history_plots_without_a_legend_warning(tmp_path):
    history = [{"step": 10, "loss/mlm_rt": 6.1}, {"step": 20, "loss/mlm_rt": 5.4}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "No artists with labels found" would raise
        out = plot_history(history, tmp_path / "curves.png")
    assert out is not None and out.stat().st_size > 5_000


def test_nothing_logged_writes_no_plot(tmp_path):
    assert plot_history([{"step": 10, "lr": 1e-4}], tmp_path / "curves.png") is None
    assert not (tmp_path / "curves.png").exists()
