"""No host sync inside a training step, counted on the CPU with a stand-in device array.

``DeviceArray`` is a NumPy array that plays an array on a GPU: every way CuPy reads an
array back to the host -- ``float()``, ``int()``, ``bool()``, ``.item()``, ``.get()``,
``.tolist()``, formatting -- is counted. Results of arithmetic stay DeviceArrays (also
0-d ones, which NumPy would otherwise turn into host scalars), so a number that comes
out of the model and is read in a step shows up in the count.
"""

from __future__ import annotations

import numpy as np
import pytest

import minivgg.train as train_module
from minivgg import losses as losses_module
from minivgg.backend import get_cpu_kernels, set_cpu_kernels
from minivgg.checkpoint import RunFacts
from minivgg.data import Compose, DataLoader, HorizontalFlip, Normalize, RandomCrop, make_shapes
from minivgg.data import loader as loader_module
from minivgg.models import vgg
from minivgg.optim import SGD
from minivgg.schedules import Cosine
from minivgg.scoring import evaluate
from minivgg.train import Trainer, train_step

TINY = [8, "M", 16, "M"]


class DeviceArray(np.ndarray):
    """A NumPy array standing in for a GPU array: reads back to the host are counted."""

    reads = 0

    def __array_wrap__(self, arr, context=None, return_scalar=False):
        return np.asarray(arr).view(DeviceArray)          # 0-d results stay on the device

    def __getitem__(self, key):
        out = super().__getitem__(key)
        return out if isinstance(out, np.ndarray) else np.asarray(out).view(DeviceArray)

    def _read(self):
        DeviceArray.reads += 1
        return self.view(np.ndarray)

    def __float__(self):
        return float(self._read())

    def __int__(self):
        return int(self._read())

    def __index__(self):
        return self._read().__index__()

    def __bool__(self):
        return bool(self._read())

    def __format__(self, spec):
        return format(self._read()[()], spec)

    def item(self, *args):
        return self._read().item(*args)

    def tolist(self):
        return self._read().tolist()

    def get(self):
        return self._read().copy()


def on_device(a):
    return np.asarray(a).view(DeviceArray)


class DeviceModule:
    """NumPy, except that ``asarray`` leaves a DeviceArray as it is (as cupy.asarray does
    with a CuPy array; numpy.asarray would turn it into a plain, uncounted array)."""

    def __getattr__(self, name):
        return getattr(np, name)

    def asarray(self, a, *args, **kwargs):
        return a if isinstance(a, DeviceArray) else np.asarray(a, *args, **kwargs)


@pytest.fixture
def fake_device(monkeypatch):
    """Loaders put batches on the stand-in device; the reference kernels compute."""
    monkeypatch.setattr(loader_module, "to_device", on_device)
    monkeypatch.setattr(losses_module, "get_array_module", lambda x=None: DeviceModule())
    before = get_cpu_kernels()
    set_cpu_kernels("numpy")
    DeviceArray.reads = 0
    yield
    set_cpu_kernels(before)


def model_on_device(model):
    for p in model.parameters():
        p.data = on_device(p.data)
    for name, buf in model.named_buffers().items():
        model._set_buffer(name, on_device(buf))
    return model


def tiny_trainer(tmp_path, progress_every=2, epochs=1):
    ds = make_shapes(n_train=96, n_test=32, seed=0)
    norm = Normalize.from_data(ds.train_images)
    train = DataLoader(ds.train_images, ds.train_labels, 32, drop_last=True, seed=0,
                       transform=Compose([RandomCrop(32, 4), HorizontalFlip()]),
                       normalize=norm, device=True, num_classes=10)
    test = DataLoader(ds.test_images, ds.test_labels, 16, shuffle=False, normalize=norm,
                      device=True, num_classes=10)
    model = model_on_device(vgg(TINY, 10, 32, head="cifar", hidden=(16,), dropout=0.5,
                                batch_norm=True, seed=0))
    opt = SGD(model, lr=0.05, momentum=0.9, weight_decay=5e-4)
    return Trainer(model, opt, Cosine(0.05, epochs), train, tmp_path, epochs, test_loader=test,
                   facts=RunFacts(model.spec, classes=ds.classes), progress=False,
                   log=lambda *a: None, progress_every=progress_every)


def test_the_counter_counts_what_a_synchronising_step_reads(fake_device):
    """The control: the step that returns Python numbers reads from the device, and the
    counter sees it -- so a zero below means something."""
    model = model_on_device(vgg(TINY, 10, 32, head="cifar", seed=0))
    x = on_device(np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32))
    y = on_device(np.array([0, 1, 2, 3]))
    loss, correct = train_step(model, SGD(model, lr=0.01), x, y)
    assert isinstance(loss, float) and isinstance(correct, int)
    assert DeviceArray.reads >= 4        # labels min and max, the loss, the correct count


def test_no_read_back_inside_a_step_and_only_at_the_documented_points(fake_device, tmp_path,
                                                                      monkeypatch):
    trainer = tiny_trainer(tmp_path, progress_every=2, epochs=2)
    in_steps, in_collect, calls = [], [], []
    real_step, real_collect, real_epoch = (train_module.train_step, Trainer._collect,
                                           Trainer._run_epoch)

    def step(*args, **kwargs):
        before = DeviceArray.reads
        out = real_step(*args, **kwargs)
        in_steps.append(DeviceArray.reads - before)
        assert isinstance(out[0], DeviceArray) and isinstance(out[1], DeviceArray)
        return out

    def collect(self):
        before = DeviceArray.reads
        real_collect(self)
        in_collect.append(DeviceArray.reads - before)

    def run_epoch(self, on_step):
        before = DeviceArray.reads
        out = real_epoch(self, on_step)
        calls.append(DeviceArray.reads - before)
        return out
    monkeypatch.setattr(train_module, "train_step", step)
    monkeypatch.setattr(Trainer, "_collect", collect)
    monkeypatch.setattr(Trainer, "_run_epoch", run_epoch)
    assert trainer.fit()["status"] == "done"
    assert in_steps == [0] * 6                          # 2 epochs of 3 steps: not one read
    # per epoch: the sums (a float and an int) read after batch 2 (progress_every) and at
    # the end of the epoch; once after the run's first step, with the first loss (3 reads);
    # save() at the end of an epoch finds nothing left to read.
    assert in_collect == [3, 2, 2, 0, 2, 2, 0]          # batch 1 (the first loss), 2, 3
    assert calls == [3 + 2 + 2, 2 + 2]                  # the epoch loop reads nothing else
    rows = trainer.history
    assert np.isfinite(rows[-1]["train_loss"]) and 0 <= rows[-1]["train_top1"] <= 100


def test_evaluation_reads_back_once_not_per_batch(fake_device, tmp_path):
    trainer = tiny_trainer(tmp_path)
    out = evaluate(trainer.model, trainer.test_loader)        # 2 batches
    assert DeviceArray.reads == 3                             # loss sum, top-1, top-5
    assert out["n"] == 32 and np.isfinite(out["loss"])


def test_how_often_the_sums_are_read_changes_no_figure(fake_device, tmp_path):
    """The device sums continue one float64 chain; reading them is only a read."""
    histories = []
    for every in (1, 2, 25):
        t = tiny_trainer(tmp_path / str(every), progress_every=every, epochs=2)
        t.fit()
        histories.append([{k: v for k, v in r.items() if k != "elapsed_s"} for r in t.history])
    assert histories[0] == histories[1] == histories[2]


def test_a_nan_loss_is_caught_when_the_sums_come_back_and_nothing_is_saved(fake_device,
                                                                           tmp_path):
    from minivgg.train import TrainingDiverged
    trainer = tiny_trainer(tmp_path, progress_every=2)

    def poison(t):
        if t.batch == 1:
            t.model.parameters()[-2].data[...] = np.nan
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 1, in batch 2 "):
        trainer.fit(on_step=poison)
    assert not (tmp_path / "last.npz").exists()


def test_the_run_builder_sends_uint8_and_normalises_after_the_copy(monkeypatch):
    from minivgg.run import DEFAULTS, build_run, train_transform
    config = {**DEFAULTS, "dataset": "shapes", "limit": 64, "backend": "numba"}
    run = build_run(config)
    loader = run.train_loader
    assert loader.normalize is run.normalize and "Normalize" not in repr(loader.transform)
    assert loader.label_range[1] < len(run.classes) and run.test_loader.normalize is not None
    moved = []
    monkeypatch.setattr(loader_module, "to_device", lambda a: moved.append(a.dtype) or a)
    x_device, _ = next(iter(loader))
    assert moved == [np.uint8, np.int64]
    host = DataLoader(loader.images, loader.labels, loader.batch_size, seed=loader.seed,
                      drop_last=loader.drop_last,
                      transform=train_transform(config, run.normalize, run.image_shape[1]))
    x_host, _ = next(iter(host))                  # the float path: normalised on the host
    np.testing.assert_array_equal(x_device, x_host)
