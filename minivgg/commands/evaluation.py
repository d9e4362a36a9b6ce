"""``minivgg eval`` (test figures of a checkpoint) and ``minivgg predict`` (your pictures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minivgg.commands.common import UserError, checkpoint_path, load_run, run_config


def evaluate(args) -> int:
    from minivgg.checkpoint import read_checkpoint
    from minivgg.scoring import evaluate as score
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


def predict(args) -> int:
    """Top classes of pictures: with a trained run, or (``--weights``) ImageNet weights."""
    if args.weights:
        from minivgg.commands.explain import predict_pretrained
        return predict_pretrained(args, args.inputs)
    if len(args.inputs) < 2:
        raise UserError("expected a run folder (or .npz checkpoint) and at least one picture, "
                        f"got {args.inputs}; or use --weights vgg16 with pictures only")
    args.run, args.images = args.inputs[0], args.inputs[1:]
    from minivgg.backend import asnumpy, to_device
    from minivgg.checkpoint import read_checkpoint
    from minivgg.data.images import ImageError, prepare_image, read_image
    from minivgg.modes import no_grad
    from minivgg.run import test_transform
    ckpt = read_checkpoint(checkpoint_path(args.run, args.checkpoint))
    run = load_run(run_config(ckpt, backend=args.backend), checkpoint=ckpt, with_data=False)
    channels, size, _ = run.image_shape
    transform, classes = test_transform(run.config, run.normalize), run.classes
    run.model.eval()
    for file in args.images:
        try:          # refuses huge pictures before decoding them; shrinks big ones early
            img = prepare_image(read_image(file, target=size), channels, size)
        except ImageError as exc:
            raise UserError(str(exc)) from None
        x = transform(img[None], None)
        with no_grad():
            logits = run.model.forward(to_device(x.astype(np.float32), run.device))
        logits = asnumpy(logits)[0].astype(np.float64)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        top = np.argsort(-p)[:min(args.top, len(classes))]
        print(f"{file}: " + ", ".join(f"{classes[k]} {100 * p[k]:.1f}%" for k in top))
    return 0
