"""The minivgg command: one-epoch runs that write a whole run folder, eval, predict, help,
the offline error, resume, and the other sub-commands."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from minivgg.checkpoint import read_checkpoint
from minivgg.cli import build_parser, main
from minivgg.data.shapes import SHAPE_CLASSES
from minivgg.files import read_csv, read_json

RUN_FILES = ["config.json", "metrics.csv", "last.npz", "best.npz", "curves.png",
             "confusion.png", "predictions.png", "filters.png", "feature_maps.png"]
QUICK = ["--width", "0.125", "--epochs", "1", "--batch-size", "32", "--no-progress",
         "--backend", "numba"]


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "shapes"
    assert main(["train", "--dataset", "shapes", "--limit", "96", "--out", str(run), *QUICK]) == 0
    return run


def test_train_on_shapes_writes_every_file_of_the_run_folder(shapes_run, capsys):
    assert sorted(p.name for p in shapes_run.iterdir()) == sorted(RUN_FILES)
    config = read_json(shapes_run / "config.json")
    assert config["dataset"] == "shapes" and config["width"] == 0.125 and config["seed"] == 0
    rows = read_csv(shapes_run / "metrics.csv")
    assert len(rows) == 1 and 0 <= rows[0]["test_top1"] <= 100
    best = read_checkpoint(shapes_run / "best.npz")
    assert best.facts.classes == list(SHAPE_CLASSES)
    assert len(best.facts.normalize["mean"]) == 3
    assert "momentum.features.0.weight" in best.optim_state


def test_eval_prints_accuracy_per_class(shapes_run, capsys):
    assert main(["eval", str(shapes_run), "--no-plots", "--backend", "numba"]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "top-5" in out and "(after epoch 1)" in out


def test_predict_on_a_png_written_here(shapes_run, tmp_path, capsys):
    import matplotlib.pyplot as plt

    from minivgg.data import make_shapes
    picture = make_shapes(n_train=0, n_test=1, seed=3).test_images[0].transpose(1, 2, 0)
    big = np.kron(picture, np.ones((3, 3, 1), dtype=np.uint8))        # 96x96: gets resized
    plt.imsave(tmp_path / "shape.png", big)
    assert main(["predict", str(shapes_run), str(tmp_path / "shape.png")]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    classes = read_checkpoint(shapes_run / "best.npz").facts.classes
    assert line.startswith(str(tmp_path / "shape.png"))
    assert line.count("%") == 5 and sum(name in line for name in classes) == 5


def test_resume_refuses_a_used_folder_and_continues_a_finished_run(shapes_run, capsys):
    assert main(["train", "--dataset", "shapes", "--out", str(shapes_run), *QUICK]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(shapes_run), "--no-plots", "--no-progress"]) == 0
    assert len(read_csv(shapes_run / "metrics.csv")) == 1       # nothing left to do


@pytest.mark.slow
def test_one_epoch_on_the_real_cifar10_subset(shared_cifar_dir, tmp_path):
    run = tmp_path / "cifar"
    assert main(["train", "--data-dir", str(shared_cifar_dir), "--limit", "128", "--out",
                 str(run), *QUICK]) == 0
    assert sorted(p.name for p in run.iterdir()) == sorted(RUN_FILES)
    assert read_checkpoint(run / "last.npz").facts.classes[:2] == ["airplane", "automobile"]


def test_offline_train_fails_fast_naming_data_dir_and_shapes(tmp_path, monkeypatch, capsys):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    start = time.perf_counter()
    code = main(["train", "--data-dir", str(tmp_path / "empty"), "--no-progress"])
    assert code == 2 and time.perf_counter() - start < 10
    err = capsys.readouterr().err
    assert "--data-dir" in err and "--dataset shapes" in err and "cifar10" in err
    assert "Traceback" not in err


def test_overfit_batch_reaches_100_percent(capsys):
    assert main(["train", "--dataset", "shapes", "--limit", "64", "--overfit-batch", "16",
                 "--width", "0.125", "--backend", "numba", "--lr", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "ok: 100% on the batch" in out and "ln(10)" in out


@pytest.mark.parametrize("command", [[], ["train"], ["eval"], ["predict"], ["summary"],
                                     ["gradcheck"], ["bench"], ["explain"]])
def test_every_help_exits_cleanly(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: minivgg" in out
    if command == ["train"]:
        for flag in ("--model", "--width", "--batch-norm", "--epochs", "--batch-size", "--lr",
                     "--optimizer", "--schedule", "--augment", "--backend", "--dataset",
                     "--data-dir", "--limit", "--seed", "--out", "--resume", "--overfit-batch"):
            assert flag in out, flag
        assert "(default: cifar10)" in out


def test_train_defaults_are_the_documented_recipe():
    args = build_parser().parse_args(["train"])
    assert (args.dataset, args.model, args.batch_norm, args.optimizer) == ("cifar10", "A", True,
                                                                          "sgd")
    assert (args.momentum, args.weight_decay, args.augment) == (0.9, 5e-4, "crop+flip")


@pytest.mark.slow
def test_summary_gradcheck_and_bench(capsys):
    assert main(["summary", "vgg11", "--input", "32", "--classes", "10", "--width", "0.25"]) == 0
    assert "Conv2D" in capsys.readouterr().out
    assert main(["gradcheck", "vgg11", "--width", "0.0625", "--input", "32"]) == 0
    assert "ok: worst relative error" in capsys.readouterr().out
    assert main(["gradcheck", "vgg11", "--width", "0.0625", "--input", "32",
                 "--batch-norm"]) == 0
    out = capsys.readouterr().out
    assert "ok: worst relative error" in out and "features.0.bias" in out and "zero gradient" in out
    assert main(["bench", "--width", "0.125", "--steps", "2", "--batch-size", "8",
                 "--backend", "numba"]) == 0
    assert "training images/s" in capsys.readouterr().out


def test_train_reports_the_selected_and_the_last_checkpoint_on_test(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "shapes", "--limit", "96", "--out", str(run), *QUICK,
                 "--epochs", "2", "--no-plots"]) == 0
    out = capsys.readouterr().out
    rows = read_csv(run / "metrics.csv")
    assert {"val_loss", "val_top1", "test_top1"} <= set(rows[0])
    chosen = read_checkpoint(run / "best.npz").progress.epoch
    assert rows[chosen - 1]["val_top1"] == max(r["val_top1"] for r in rows)
    assert f"selected: best.npz (epoch {chosen}, best validation top-1" in out
    assert f"test top-1 {rows[chosen - 1]['test_top1']:.2f}%" in out
    assert f"last:     last.npz (epoch 2, validation top-1 {rows[1]['val_top1']:.2f}%): test " \
           f"top-1 {rows[1]['test_top1']:.2f}%" in out


def test_val_split_zero_trains_on_everything_and_selects_the_last_epoch(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "shapes", "--limit", "96", "--val-split", "0", "--out",
                 str(run), *QUICK, "--epochs", "2", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "validation split 0%" in out and "the last epoch is the selected one" in out
    assert "val_top1" not in read_csv(run / "metrics.csv")[0]
    assert (run / "best.npz").read_bytes() == (run / "last.npz").read_bytes()
    assert read_json(run / "config.json")["val_split"] == 0.0


def test_every_command_places_its_model_with_device_place(shapes_run, tmp_path, monkeypatch,
                                                          capsys):
    import matplotlib.pyplot as plt

    import minivgg.device
    placed, real = [], minivgg.device.place

    def spy(model, optimizer=None, device="cpu"):
        placed.append(device)
        return real(model, optimizer, device)
    monkeypatch.setattr(minivgg.device, "place", spy)
    plt.imsave(tmp_path / "x.png", np.zeros((32, 32, 3), np.uint8))
    commands = [["eval", str(shapes_run), "--no-plots", "--backend", "numba"],
                ["predict", str(shapes_run), str(tmp_path / "x.png"), "--backend", "numba"],
                ["gradcheck", "vgg11", "--width", "0.0625"],
                ["bench", "--width", "0.125", "--steps", "1", "--batch-size", "4",
                 "--backend", "numba"],
                ["train", "--dataset", "shapes", "--limit", "32", "--overfit-batch", "8",
                 "--width", "0.125", "--backend", "numba"]]
    for argv in commands:
        placed.clear()
        main(argv)
        assert placed == ["cpu"], argv


@pytest.mark.gpu
def test_gradcheck_and_predict_with_cupy_run_on_the_gpu(shapes_run, tmp_path, monkeypatch,
                                                         capsys):
    import matplotlib.pyplot as plt

    import minivgg.gradcheck
    from minivgg.backend import device_of
    from minivgg.device import model_device
    seen, real = [], minivgg.gradcheck.check_model

    def spy(model, x, labels, **kw):
        seen.append((model_device(model), device_of(x), device_of(labels)))
        return real(model, x, labels, **kw)
    monkeypatch.setattr(minivgg.gradcheck, "check_model", spy)
    assert main(["gradcheck", "vgg11", "--width", "0.0625", "--backend", "cupy"]) == 0
    assert seen == [("gpu", "gpu", "gpu")] and "backend cupy" in capsys.readouterr().out
    plt.imsave(tmp_path / "x.png", np.zeros((32, 32, 3), np.uint8))
    assert main(["predict", str(shapes_run), str(tmp_path / "x.png"), "--backend", "cupy"]) == 0
    assert main(["eval", str(shapes_run), "--no-plots", "--backend", "cupy"]) == 0
    assert "top-1" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["saliency", "smoothgrad", "gradcam"])
def test_explain_a_shapes_run_writes_its_figure_in_seconds(shapes_run, tmp_path, method,
                                                            capsys):
    import time

    import matplotlib.pyplot as plt

    from minivgg.data import make_shapes
    picture = make_shapes(n_train=0, n_test=1, seed=5).test_images[0].transpose(1, 2, 0)
    plt.imsave(tmp_path / "shape.png", picture)
    out = tmp_path / f"{method}.png"
    start = time.perf_counter()
    assert main(["explain", str(shapes_run), str(tmp_path / "shape.png"), "--method", method,
                 "--out", str(out), "--backend", "numba"]) == 0
    assert time.perf_counter() - start < 30
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    text = capsys.readouterr().out
    assert method in text and f"wrote {out}" in text


def test_explain_and_predict_refuse_clearly(shapes_run, tmp_path, capsys, monkeypatch):
    import matplotlib.pyplot as plt
    plt.imsave(tmp_path / "x.png", np.zeros((32, 32, 3), np.uint8))
    assert main(["explain", str(shapes_run), str(tmp_path / "x.png"), "--method", "saliency",
                 "--layer", "2"]) == 2
    assert "only --method gradcam looks at a block" in capsys.readouterr().err
    assert main(["predict", str(shapes_run)]) == 2
    assert "at least one picture" in capsys.readouterr().err
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("MINIVGG_DATA", str(tmp_path / "cache"))
    import minivgg.data.download as download

    def offline(*args, **kwargs):
        raise download.DownloadError("no network here")
    monkeypatch.setattr(download, "download", offline)
    monkeypatch.setattr("urllib.request.urlopen", offline)
    assert main(["predict", "--weights", "vgg16", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "vgg16-397923af.pth" in err


def test_summary_plot_draws_the_blocks(tmp_path, capsys):
    out = tmp_path / "vgg16.png"
    assert main(["summary", "vgg16", "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert f"wrote {out}" in capsys.readouterr().out


def test_the_figures_reuse_the_last_test_evaluation(tmp_path, monkeypatch):
    """A finished run scores the test set once per epoch; drawing its figures adds none."""
    from minivgg import scoring
    from minivgg import train as train_module
    passes, evaluate = [], scoring.evaluate

    def counted(model, loader, predictions=False):
        passes.append(len(loader.labels))
        return evaluate(model, loader, predictions)
    monkeypatch.setattr(train_module, "evaluate", counted)
    monkeypatch.setattr("minivgg.scoring.evaluate", counted)
    run = tmp_path / "run"
    assert main(["train", "--dataset", "shapes", "--limit", "96", "--out", str(run), *QUICK,
                 "--epochs", "2", "--val-split", "0"]) == 0
    assert len(passes) == 2                       # epochs 1 and 2, nothing for the figures
    assert all((run / name).exists() for name in RUN_FILES)
