"""The training loop: learning, exact resumption, the NaN guard, Ctrl-C, checkpoints."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from minivgg.checkpoint import RunFacts, encode_checkpoint, read_checkpoint
from minivgg.data import Compose, DataLoader, HorizontalFlip, Normalize, RandomCrop, make_shapes
from minivgg.files import RunFileError, atomic_write_bytes, read_csv
from minivgg.models import vgg
from minivgg.optim import SGD
from minivgg.schedules import Cosine
from minivgg.train import Trainer, TrainingDiverged, count_correct, evaluate, train_step

TINY = [8, "M", 16, "M"]          # two VGG blocks: 32x32 -> 8x8x16


@pytest.fixture(scope="module")
def shapes():
    return make_shapes(n_train=96, n_test=32, seed=0)


def make_trainer(ds, run_dir, init_seed=0, epochs=2, lr=0.05, seed=0):
    """Dropout, batch norm, crop+flip and shuffling: every source of randomness in play.

    ``seed`` is the run's (shuffling, augmentation); ``init_seed`` the model's, so a resumed
    trainer can start from other weights and dropout state that restore() must replace.
    """
    norm = Normalize.from_data(ds.train_images)
    train = DataLoader(ds.train_images, ds.train_labels, 32, drop_last=True, seed=seed,
                       transform=Compose([RandomCrop(32, 4), HorizontalFlip(), norm]))
    test = DataLoader(ds.test_images, ds.test_labels, 16, shuffle=False, transform=norm)
    model = vgg(TINY, 10, 32, head="cifar", hidden=(16,), dropout=0.5, batch_norm=True,
                seed=init_seed)
    opt = SGD(model, lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    facts = RunFacts(model.spec, classes=ds.classes)
    return Trainer(model, opt, Cosine(lr, epochs), train, run_dir, epochs, test_loader=test,
                   facts=facts, progress=False, log=lambda *a: None)


def test_count_correct_top1_and_top5():
    logits = np.array([[9, 8, 7, 6, 5, 4], [0, 1, 2, 3, 4, 5], [5, -1, 0, 0.5, 0.2, 1.0]])
    labels = np.array([0, 0, 1])
    assert count_correct(logits, labels, k=5) == (1, 1)    # rows 1 and 2: label ranks 6th
    assert count_correct(logits[:, :3], labels, k=5) == (1, 3)  # k capped at the classes


def test_fit_writes_metrics_and_checkpoints_and_learns(shapes, tmp_path):
    trainer = make_trainer(shapes, tmp_path, epochs=2)
    result = trainer.fit()
    assert result["status"] == "done"
    rows = read_csv(tmp_path / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert set(rows[0]) >= {"train_loss", "test_loss", "test_top1", "test_top5", "lr"}
    assert rows[-1]["test_top5"] >= rows[-1]["test_top1"]
    last = read_checkpoint(tmp_path / "last.npz")
    assert last.progress.epoch == 2 and last.progress.batch == 0
    assert last.facts.classes == shapes.classes
    assert (tmp_path / "best.npz").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_first_loss_is_reported_beside_ln_classes(shapes, tmp_path):
    lines = []
    trainer = make_trainer(shapes, tmp_path, epochs=1)
    trainer.log = lines.append
    trainer.fit()
    assert "ln(10) = 2.3026" in lines[0] and lines[0].startswith("first loss")
    assert abs(float(lines[0].split()[2].rstrip(";")) - np.log(10)) < 0.5


def test_resume_after_interruption_is_bit_identical(shapes, tmp_path):
    """Stopped by a real SIGINT mid-epoch, resumed in fresh objects: the same weights."""
    straight = make_trainer(shapes, tmp_path / "a", epochs=2)
    straight.fit()

    def interrupt(trainer):
        if trainer.global_step == 2:                   # epoch 1 has 3 batches: stop mid-way
            os.kill(os.getpid(), signal.SIGINT)
    first = make_trainer(shapes, tmp_path / "b", epochs=2)
    before = signal.getsignal(signal.SIGINT)     # SIG_IGN under nohup, else Python's default
    assert first.fit(on_step=interrupt)["status"] == "interrupted"
    assert (first.epoch, first.batch) == (0, 2)
    assert signal.getsignal(signal.SIGINT) is before                      # handler restored

    resumed = make_trainer(shapes, tmp_path / "b", init_seed=99, epochs=2)  # other weights
    resumed.restore(tmp_path / "b" / "last.npz")
    assert resumed.fit()["status"] == "done"
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    for ka, kb in zip(straight.optimizer.state_dict().items(),
                      resumed.optimizer.state_dict().items()):
        np.testing.assert_array_equal(ka[1], kb[1])
    for ra, rb in zip(straight.history, resumed.history):
        assert {k: v for k, v in ra.items() if k != "elapsed_s"} == \
            {k: v for k, v in rb.items() if k != "elapsed_s"}


def test_resume_from_an_epoch_boundary_is_bit_identical(shapes, tmp_path):
    straight = make_trainer(shapes, tmp_path / "a", epochs=2)
    straight.fit()
    first = make_trainer(shapes, tmp_path / "b", epochs=2)
    first.epochs = 1                                   # as if stopped after epoch 1
    first.fit()
    resumed = make_trainer(shapes, tmp_path / "b", init_seed=5, epochs=2)
    resumed.restore(tmp_path / "b" / "last.npz")
    resumed.fit()
    for key, value in straight.model.state_dict().items():
        np.testing.assert_array_equal(value, resumed.model.state_dict()[key], err_msg=key)


def test_nan_loss_stops_with_a_message_and_keeps_the_last_checkpoint(shapes, tmp_path):
    trainer = make_trainer(shapes, tmp_path, epochs=3)
    before = {}

    def poison(t):                     # after one good epoch and one more step
        if t.epoch == 1 and not before:
            before["last"] = (tmp_path / "last.npz").read_bytes()
            t.model.parameters()[-2].data[...] = np.nan    # the last Dense weight
    with pytest.raises(TrainingDiverged) as info:
        trainer.fit(on_step=poison)
    message = str(info.value)
    assert "nan" in message and "epoch 2" in message and "unchanged" in message
    assert "--lr" in message
    assert (tmp_path / "last.npz").read_bytes() == before["last"]
    assert read_checkpoint(tmp_path / "last.npz").progress.epoch == 1
    assert len(read_csv(tmp_path / "metrics.csv")) == 1


def test_checkpoint_round_trip_without_pickle(shapes, tmp_path):
    trainer = make_trainer(shapes, tmp_path, epochs=1)
    trainer.fit()
    saved = read_checkpoint(tmp_path / "last.npz")
    with np.load(tmp_path / "last.npz", allow_pickle=False) as npz:   # plain arrays only
        assert all(npz[k].dtype != object for k in npz.files)
    clone = make_trainer(shapes, tmp_path / "clone", init_seed=7, epochs=1)
    clone.restore(tmp_path / "last.npz")
    x = next(iter(trainer.test_loader))[0]
    np.testing.assert_array_equal(trainer.model.forward(x, training=False),
                                  clone.model.forward(x, training=False))
    assert clone.generators[0].state_dict() == trainer.generators[0].state_dict()   # seeds
    atomic_write_bytes(tmp_path / "copy.npz", encode_checkpoint(
        saved.model_state, saved.optim_state, saved.facts, saved.progress))
    again = read_checkpoint(tmp_path / "copy.npz")
    assert (again.facts, again.progress) == (saved.facts, saved.progress)
    assert again.model_state.keys() == saved.model_state.keys()
    with pytest.raises(RunFileError, match="no checkpoint"):
        read_checkpoint(tmp_path / "missing.npz")


def test_tiny_vgg_overfits_one_batch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 3, 16, 16)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    model = vgg(TINY, 10, 16, head="cifar", batch_norm=True, seed=0)
    opt = SGD(model, lr=0.05, weight_decay=0.0)
    for _ in range(60):
        loss, _ = train_step(model, opt, x, y)
    assert loss < 0.05
    assert (model.forward(x, training=False).argmax(1) == y).mean() == 1.0


def test_evaluate_returns_predictions(shapes, tmp_path):
    trainer = make_trainer(shapes, tmp_path, epochs=1)
    out = evaluate(trainer.model, trainer.test_loader, predictions=True)
    assert out["n"] == 32 and out["predicted"].shape == (32,)
    assert out["top1"] == pytest.approx(100 * (out["predicted"] == out["labels"]).mean())


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_weights_broken_by_an_epochs_last_step_are_not_saved(shapes, tmp_path):
    trainer = make_trainer(shapes, tmp_path, epochs=1)

    def poison(t):
        if t.batch == len(t.train_loader):
            t.model.parameters()[-2].data[...] = np.inf
    with pytest.raises(TrainingDiverged, match="test loss became nan"):
        trainer.fit(on_step=poison)
    assert not (tmp_path / "last.npz").exists() and not (tmp_path / "metrics.csv").exists()


# -- the validation split: selection and the plateau schedule never see the test set ---------
def test_the_validation_split_is_seeded_disjoint_and_normalisation_ignores_it():
    from minivgg.run import DEFAULTS, build_run, split_validation
    config = {**DEFAULTS, "dataset": "shapes", "limit": 100, "val_split": 0.2,
              "backend": "numba"}
    run = build_run(config)
    train, val = split_validation(100, 0.2, config["seed"])
    assert len(val) == 20 and not set(train) & set(val) and len(train) + len(val) == 100
    np.testing.assert_array_equal(run.val_loader.images, run.dataset.train_images[val])
    np.testing.assert_array_equal(run.train_loader.images, run.dataset.train_images[train])
    expected = Normalize.from_data(run.dataset.train_images[train]).state_dict()
    assert run.normalize.state_dict() == expected
    assert expected != Normalize.from_data(run.dataset.train_images).state_dict()
    np.testing.assert_array_equal(split_validation(100, 0.2, 0)[1], val)       # seeded
    assert not np.array_equal(split_validation(100, 0.2, 1)[1], val)
    assert run.test_loader.images.shape[0] == len(run.dataset.test_images)


def test_best_and_plateau_follow_validation_accuracy_never_test(shapes, tmp_path, monkeypatch):
    """Scripted scores: validation peaks at epoch 1, test keeps rising. best.npz must be
    epoch 1 and the plateau schedule must reduce the learning rate."""
    import minivgg.train as train_module
    from minivgg.schedules import Plateau
    trainer = make_trainer(shapes, tmp_path, epochs=3)
    trainer.val_loader = trainer.test_loader.__class__(
        shapes.train_images[:16], shapes.train_labels[:16], 16, shuffle=False,
        transform=Normalize.from_data(shapes.train_images))
    trainer.schedule = Plateau(0.05, factor=0.1, patience=0)
    scripted = {id(trainer.val_loader): iter([60.0, 40.0, 50.0]),
                id(trainer.test_loader): iter([10.0, 50.0, 90.0])}

    def scores(model, loader, predictions=False):
        return {"loss": 1.0, "top1": next(scripted[id(loader)]), "top5": 100.0, "n": 16}
    monkeypatch.setattr(train_module, "evaluate", scores)
    trainer.fit()
    rows = read_csv(tmp_path / "metrics.csv")
    assert [r["val_top1"] for r in rows] == [60, 40, 50]
    assert [r["test_top1"] for r in rows] == [10, 50, 90]
    best = read_checkpoint(tmp_path / "best.npz").progress
    assert (best.epoch, best.best_top1, trainer.best_epoch) == (1, 60.0, 1)
    assert trainer.schedule.reductions == 2 and rows[-1]["lr"] == pytest.approx(0.05 * 0.1)
