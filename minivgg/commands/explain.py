"""``minivgg explain``: why the network said what it said, as a figure; and the
pretrained-weights half of ``minivgg predict`` (``--weights vgg16``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minivgg.commands.common import UserError, checkpoint_path, load_run, run_config
from minivgg.data.download import DownloadError

# a missing or damaged weights file, a picture that is not one, no network: one line each
_USER_ERRORS = (ValueError, OSError, DownloadError)


def _pretrained(name: str, backend: str):
    """The torchvision VGG named by ``name`` (a path or "vgg16"...), on the chosen device."""
    from minivgg.device import place
    from minivgg.plots_explain import pretrained_vgg
    from minivgg.run import select_backend
    _, device = select_backend(backend)
    try:
        return place(pretrained_vgg(name), None, device)
    except _USER_ERRORS as exc:
        raise UserError(str(exc)) from None


def predict_pretrained(args, files) -> int:
    """Top classes of each photo with ImageNet weights (torchvision's preprocessing)."""
    from minivgg.plots_explain import predict_photo
    model = _pretrained(args.weights, args.backend)
    for file in files:
        try:
            top = predict_photo(model, file, args.top)
        except _USER_ERRORS as exc:
            raise UserError(str(exc)) from None
        print(f"{file}: " + ", ".join(f"{name} {100 * p:.1f}%" for _, name, p in top))
    return 0


def _from_run(args):
    """(model, x, picture for display, class names) for an image and a trained run."""
    from minivgg.backend import to_device
    from minivgg.checkpoint import read_checkpoint
    from minivgg.data.images import prepare_image, read_image
    from minivgg.run import test_transform
    ckpt = read_checkpoint(checkpoint_path(args.source, args.checkpoint))
    run = load_run(run_config(ckpt, backend=args.backend), checkpoint=ckpt, with_data=False)
    channels, size, _ = run.image_shape
    img = prepare_image(read_image(args.image, target=size), channels, size)
    x = test_transform(run.config, run.normalize)(img[None], None).astype(np.float32)
    return run.model, to_device(x, run.device), img.transpose(1, 2, 0), run.classes


def _from_weights(args):
    """The same for ImageNet weights: torchvision's preprocessing, the 1000 class names."""
    from minivgg import imagenet
    from minivgg.backend import to_device
    from minivgg.device import model_device
    model = _pretrained(args.source, args.backend)
    x = imagenet.preprocess(args.image)
    picture = np.rint(np.clip(imagenet.unnormalize(x), 0, 1) * 255).astype(np.uint8)
    return model, to_device(x, model_device(model)), picture, imagenet.class_names()


def explain(args) -> int:
    """Saliency, SmoothGrad or Grad-CAM of one image, drawn beside it with the top classes."""
    from minivgg.plots_explain import explain_file
    if args.layer is not None and args.method != "gradcam":
        raise UserError(f"--layer {args.layer}: only --method gradcam looks at a block")
    is_run = Path(args.source).is_dir() or str(args.source).endswith(".npz")
    try:
        model, x, picture, classes = (_from_run if is_run else _from_weights)(args)
        result = explain_file(model, x, picture, classes, args.method, args.layer, args.k,
                              args.out)
    except _USER_ERRORS as exc:
        raise UserError(str(exc)) from None
    where = f" at {result['layer']}" if result.get("layer") else ""
    print(f"{args.image}: {result['method']}{where} for class {result['class']} "
          f"({result['name']}); top: " + ", ".join(f"{n} {100 * p:.1f}%"
                                                   for _, n, p in result["top"]))
    print(f"wrote {result['path']}")
    return 0
