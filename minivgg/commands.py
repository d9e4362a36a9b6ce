"""What each ``minivgg`` sub-command does (the argument parser is in cli.py)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from minivgg.checkpoint import load_checkpoint, read_json, write_json
from minivgg.experiment import (
    DEFAULTS,
    load_data,
    make_loaders,
    make_model,
    make_optimizer,
    make_run_schedule,
    test_transform,
)

OFFLINE_HELP = ("Point --data-dir (or the MINIVGG_DATA variable) at a folder that holds it, or "
                "train offline on the synthetic data set: minivgg train --dataset shapes")


class UserError(Exception):
    """A problem the user can fix; printed without a traceback."""


def _backend(name: str) -> str:
    import minivgg as mv
    from minivgg.backend import BackendUnavailable
    try:
        return mv.set_backend(name)
    except BackendUnavailable as exc:
        raise UserError(str(exc)) from None


def _data(config: dict):
    from minivgg.data import DownloadError
    from minivgg.data.download import cache_dir
    try:
        return load_data(config)
    except (DownloadError, FileNotFoundError, OSError) as exc:
        where = cache_dir(config.get("data_dir"))
        hint = ("\nTo train offline now: minivgg train --dataset shapes" if "--data-dir" in
                str(exc) else f"\n{OFFLINE_HELP}")
        raise UserError(f"could not load the data set {config['dataset']!r}: it is not in "
                        f"{where} and could not be fetched.\n{exc}{hint}") from None


# -- train ------------------------------------------------------------------------------
def train(args) -> int:
    from minivgg.data import Normalize
    from minivgg.train import Trainer, TrainingDiverged

    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.json").is_file() or not (run_dir / "last.npz").is_file():
            raise UserError(f"--resume {run_dir}: expected a run folder with config.json and "
                            "last.npz")
        config = {**DEFAULTS, **read_json(run_dir / "config.json")}
    else:
        config = {k: getattr(args, k) for k in DEFAULTS}
        config["hidden"], config["milestones"] = list(args.hidden), list(args.milestones)
        run_dir = Path(args.out or f"runs/{config['dataset']}-{config['model']}-"
                       f"{time.strftime('%Y%m%d-%H%M%S')}")
        if (run_dir / "last.npz").exists() and args.overfit_batch is None:
            raise UserError(f"{run_dir} already holds a run; continue it with --resume "
                            f"{run_dir} or choose another --out")
    backend = _backend(config["backend"])
    ds = _data(config)
    normalize = Normalize.from_data(ds.train_images)
    model = make_model(config, ds.num_classes, ds.image_shape[0])
    if backend == "cupy":
        model.to("gpu")
    if args.overfit_batch is not None:
        return overfit_batch(config, model, ds, normalize, args.overfit_batch)
    train_loader, test_loader = make_loaders(config, ds, normalize)
    optimizer = make_optimizer(config, model)
    schedule = make_run_schedule(config, len(train_loader))
    meta = {"classes": ds.classes, "normalize": normalize.state_dict(), "spec": model.spec,
            "image_shape": list(ds.image_shape), "config": config}
    trainer = Trainer(model, optimizer, schedule, train_loader, test_loader, run_dir,
                      config["epochs"], meta, progress=not args.no_progress)
    if args.resume:
        trainer.restore(run_dir / "last.npz")
        print(f"resuming {run_dir} at epoch {trainer.epoch + 1}, batch {trainer.batch + 1}")
    else:
        write_json(run_dir / "config.json", config)
    print(f"{ds!r}\n{model.title} width {config['width']}: {model.num_parameters():,} "
          f"parameters | {config['optimizer']} lr {config['lr']} {config['schedule']} | "
          f"backend {backend} | run folder {run_dir}")
    try:
        result = trainer.fit()
    except TrainingDiverged as exc:
        print(f"minivgg train: {exc}")
        return 1
    if result["status"] == "interrupted":
        return 130
    best = max(row["test_top1"] for row in result["history"]) if result["history"] else 0.0
    print(f"done: best test top-1 {best:.2f}% in {trainer.elapsed:.0f} s; {run_dir}")
    if not args.no_plots:
        from minivgg.plots import run_plots
        run_plots(run_dir, model, ds, test_loader, trainer.history, normalize, config)
    return 0


def overfit_batch(config, model, ds, normalize, n: int, max_steps: int = 300) -> int:
    """Drive one fixed batch to 100 % training accuracy: the loop's sanity check."""
    from minivgg.backend import to_device
    from minivgg.experiment import train_transform
    from minivgg.losses import SoftmaxCrossEntropy
    x = train_transform({**config, "augment": "none"}, normalize, ds.image_shape[1])(
        ds.train_images[:n], None)
    x, y = to_device(x.astype(np.float32)), to_device(ds.train_labels[:n])
    optimizer, loss_fn = make_optimizer(config, model), SoftmaxCrossEntropy()
    print(f"overfitting one batch of {len(y)} images (first loss should be near "
          f"ln({ds.num_classes}) = {math.log(ds.num_classes):.3f})")
    for step in range(1, max_steps + 1):
        logits = model.forward(x, training=True)
        loss = loss_fn.forward(logits, y)
        acc = float((logits.argmax(axis=1) == y).mean())
        if acc == 1.0 and loss < 0.05:
            print(f"step {step:4d}: loss {loss:.4f}, batch accuracy 100.0%\n"
                  f"ok: 100% on the batch after {step} steps")
            return 0
        if step == 1 or step % 10 == 0:
            print(f"step {step:4d}: loss {loss:.4f}, batch accuracy {100 * acc:.1f}%")
        model.backward(loss_fn.backward())
        optimizer.step()
    print(f"FAILED: {100 * acc:.1f}% after {max_steps} steps (loss {loss:.4f}); something in "
          "the layers, the loss or the optimizer is wrong, or --lr is far off")
    return 1


# -- eval and predict -------------------------------------------------------------------
def _checkpoint_path(run: str, which: str) -> Path:
    path = Path(run)
    if path.is_dir():
        path = path / f"{which}.npz"
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}; expected a run folder written by "
                        "minivgg train (with best.npz and last.npz) or an .npz file")
    return path


def _restore_model(path: Path):
    from minivgg.models import vgg
    model_state, _, meta = load_checkpoint(path)
    spec = meta["spec"]
    model = vgg(**{**spec, "hidden": tuple(spec["hidden"])})   # (imagenet head ignores it)
    model.load_state_dict(model_state)
    return model, meta


def evaluate(args) -> int:
    from minivgg.data import DataLoader, Normalize
    from minivgg.train import evaluate as run_eval
    backend = _backend(args.backend)
    path = _checkpoint_path(args.run, args.checkpoint)
    model, meta = _restore_model(path)
    if backend == "cupy":
        model.to("gpu")
    config = dict(meta["config"])
    if args.data_dir:
        config["data_dir"] = args.data_dir
    ds = _data(config)
    normalize = Normalize(**meta["normalize"])
    loader = DataLoader(ds.test_images, ds.test_labels, config["eval_batch_size"],
                        shuffle=False, transform=test_transform(config, normalize), device=True)
    result = run_eval(model, loader, predictions=True)
    print(f"{path} (after epoch {meta['epoch']}) on {result['n']} test images of "
          f"{ds.name}: loss {result['loss']:.4f}, top-1 {result['top1']:.2f}%, "
          f"top-5 {result['top5']:.2f}%")
    for k, name in enumerate(ds.classes):
        mask = result["labels"] == k
        if mask.any():
            acc = 100.0 * (result["predicted"][mask] == k).mean()
            print(f"  {name:>14s}: {acc:6.2f}%  ({int(mask.sum())} images)")
    if not args.no_plots and Path(args.run).is_dir():
        from minivgg.plots import plot_confusion, plot_predictions
        run = Path(args.run)
        plot_confusion(result["labels"], result["predicted"], ds.classes, run / "confusion.png")
        plot_predictions(ds.test_images, result["labels"], result["predicted"], ds.classes,
                         run / "predictions.png")
        print(f"wrote {run / 'confusion.png'} and {run / 'predictions.png'}")
    return 0


def read_image(path) -> np.ndarray:
    """A PNG or JPEG file -> uint8 (C, H, W), C = 1 or 3 (alpha dropped)."""
    import matplotlib.image as mpimg
    try:
        img = np.asarray(mpimg.imread(path))
    except Exception as exc:
        raise UserError(f"cannot read {path} as an image ({exc}); expected PNG or JPEG") from None
    if img.dtype.kind == "f":
        img = np.clip(np.rint(img * 255), 0, 255)
    img = img.astype(np.uint8)
    img = img[:, :, None] if img.ndim == 2 else img[:, :, :3]
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def prepare_image(img: np.ndarray, channels: int, size: int) -> np.ndarray:
    """uint8 (C, H, W) -> uint8 (channels, size, size): colour converted, resized."""
    from minivgg.data.transforms import resize_bilinear
    if img.shape[0] != channels:
        img = (img.mean(axis=0, keepdims=True) if channels == 1 else
               np.repeat(img[:1], channels, axis=0))
    if img.shape[1:] != (size, size):
        img = resize_bilinear(img[None].astype(np.float32), size, size)[0]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def predict(args) -> int:
    from minivgg.data import Normalize
    path = _checkpoint_path(args.run, args.checkpoint)
    model, meta = _restore_model(path)
    channels, size, _ = meta["image_shape"]
    transform = test_transform(meta["config"], Normalize(**meta["normalize"]))
    classes = meta["classes"]
    for file in args.images:
        x = prepare_image(read_image(file), channels, size)[None]
        logits = model.forward(transform(x, None).astype(np.float32), training=False)[0]
        p = np.exp(logits - logits.max())
        p /= p.sum()
        top = np.argsort(-p)[:min(args.top, len(classes))]
        print(f"{file}: " + ", ".join(f"{classes[k]} {100 * p[k]:.1f}%" for k in top))
    return 0


# -- summary, gradcheck, bench ----------------------------------------------------------
def summary(args) -> int:
    from minivgg.models import vgg
    from minivgg.models.init import NoDraws
    head = args.head or ("imagenet" if args.input >= 224 else "cifar")
    try:
        model = vgg(args.model, args.classes, args.input, head=head, width=args.width,
                    batch_norm=args.batch_norm, rng=NoDraws(0))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    model.summary((3, args.input, args.input))
    return 0


def gradcheck(args) -> int:
    from minivgg.gradcheck import check_model
    from minivgg.models import vgg
    _backend(args.backend)
    model = vgg(args.model, 10, args.input, head="cifar", width=args.width,
                batch_norm=args.batch_norm, dtype=np.float64, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, args.input, args.input))
    labels = rng.integers(0, 10, 2)
    print(f"{model.title} width {args.width}, input {args.input}, float64: "
          f"{model.num_parameters():,} parameters")
    try:
        errors = check_model(model, x, labels)
    except AssertionError as exc:
        print(f"FAILED: {exc}")
        return 1
    for name, err in errors.items():
        print(f"  {name:32s} relative error {err:.2e}")
    for name in errors.zero:
        print(f"  {name:32s} zero gradient (as it must be in front of batch norm)")
    print(f"ok: worst relative error {max(errors.values()):.2e}")
    return 0


def bench(args) -> int:
    from minivgg.backend import to_device
    from minivgg.losses import SoftmaxCrossEntropy
    from minivgg.optim import SGD
    backend = _backend(args.backend)
    config = {**DEFAULTS, "model": args.model, "width": args.width}
    model = make_model(config, 10, 3)
    if backend == "cupy":
        model.to("gpu")
    rng = np.random.default_rng(0)
    x = to_device(rng.standard_normal((args.batch_size, 3, 32, 32)).astype(np.float32))
    y = to_device(rng.integers(0, 10, args.batch_size))
    optimizer, loss_fn = SGD(model, 0.01), SoftmaxCrossEntropy()
    times = []
    for i in range(args.steps + 2):                   # two warm-up steps (compilation)
        t0 = time.perf_counter()
        loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward())
        optimizer.step()
        float(loss_fn.cache[0][0, 0])                 # wait for the GPU
        if i >= 2:
            times.append(time.perf_counter() - t0)
    median = float(np.median(times))
    print(f"{model.title} width {args.width}, batch {args.batch_size}, 32x32, backend "
          f"{backend}: {args.batch_size / median:.0f} training images/s (median of "
          f"{len(times)} steps, {1000 * median:.0f} ms per step)")
    return 0
