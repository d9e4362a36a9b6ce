"""``minivgg eval`` (test figures of a checkpoint) and ``minivgg predict`` (your pictures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minivgg.commands.common import UserError, checkpoint_path, load_run, run_config


def evaluate(args) -> int:
    from minivgg.checkpoint import read_checkpoint
    from minivgg.train import evaluate as score
    path = checkpoint_path(args.run, args.checkpoint)
    ckpt = read_checkpoint(path)
    run = load_run(run_config(ckpt, backend=args.backend, data_dir=args.data_dir),
                   checkpoint=ckpt)
    result = score(run.model, run.test_loader, predictions=True)
    print(f"{path} (after epoch {ckpt.progress.epoch}) on {result['n']} test images of "
          f"{run.dataset.name}: loss {result['loss']:.4f}, top-1 {result['top1']:.2f}%, "
          f"top-5 {result['top5']:.2f}%")
    for k, name in enumerate(run.classes):
        mask = result["labels"] == k
        if mask.any():
            acc = 100.0 * (result["predicted"][mask] == k).mean()
            print(f"  {name:>14s}: {acc:6.2f}%  ({int(mask.sum())} images)")
    if not args.no_plots and Path(args.run).is_dir():
        from minivgg.plots import plot_confusion, plot_predictions
        folder = Path(args.run)
        plot_confusion(result["labels"], result["predicted"], run.classes,
                       folder / "confusion.png")
        plot_predictions(run.dataset.test_images, result["labels"], result["predicted"],
                         run.classes, folder / "predictions.png")
        print(f"wrote {folder / 'confusion.png'} and {folder / 'predictions.png'}")
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
    from minivgg.backend import asnumpy, to_device
    from minivgg.checkpoint import read_checkpoint
    from minivgg.modes import no_grad
    from minivgg.run import test_transform
    ckpt = read_checkpoint(checkpoint_path(args.run, args.checkpoint))
    run = load_run(run_config(ckpt, backend=args.backend), checkpoint=ckpt, with_data=False)
    channels, size, _ = run.image_shape
    transform, classes = test_transform(run.config, run.normalize), run.classes
    run.model.eval()
    for file in args.images:
        x = transform(prepare_image(read_image(file), channels, size)[None], None)
        with no_grad():
            logits = run.model.forward(to_device(x.astype(np.float32), run.device))
        logits = asnumpy(logits)[0].astype(np.float64)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        top = np.argsort(-p)[:min(args.top, len(classes))]
        print(f"{file}: " + ", ".join(f"{classes[k]} {100 * p[k]:.1f}%" for k in top))
    return 0
