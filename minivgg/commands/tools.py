"""``minivgg summary``, ``gradcheck`` and ``bench``: looking at a network, checking its
gradients, timing its training step."""

from __future__ import annotations

import time

import numpy as np

from minivgg.commands.common import UserError, load_run


def summary(args) -> int:
    """The table from the settings alone: no weights are allocated, whatever the size."""
    from minivgg.models import VGGSettings
    from minivgg.run import parse_model
    from minivgg.summary import summarize_settings
    head = args.head or ("imagenet" if args.input >= 224 else "cifar")
    try:
        settings = VGGSettings(parse_model(args.model), args.classes, args.input, head,
                               args.width, args.batch_norm)
        print(summarize_settings(settings))
        if args.plot:
            from minivgg.plots_explain import plot_model
            print(f"wrote {plot_model(settings, (3, args.input, args.input), args.plot)}")
    except (ValueError, OSError) as exc:
        raise UserError(str(exc)) from None
    return 0


def gradcheck(args) -> int:
    """Finite differences through a float64 VGG, on the device the backend selects."""
    from minivgg.backend import BackendUnavailable, to_device
    from minivgg.device import place
    from minivgg.gradcheck import check_model
    from minivgg.models import vgg
    from minivgg.run import parse_model, select_backend
    try:
        backend, device = select_backend(args.backend)
    except BackendUnavailable as exc:
        raise UserError(str(exc)) from None
    model = place(vgg(parse_model(args.model), 10, args.input, head="cifar", width=args.width,
                      batch_norm=args.batch_norm, dtype=np.float64, seed=0), None, device)
    rng = np.random.default_rng(0)
    x = to_device(rng.standard_normal((2, 3, args.input, args.input)), device)
    labels = to_device(rng.integers(0, 10, 2), device)
    print(f"{model.title} width {args.width}, input {args.input}, float64, backend {backend}: "
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


def random_images(n: int, classes: int = 10):
    """A Dataset of ``n`` random 32x32 colour images: what bench times the step on."""
    from minivgg.data import Dataset
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, classes, n)
    return Dataset("random", images, labels, images[:1], labels[:1],
                   [str(k) for k in range(classes)])


def bench(args) -> int:
    """Median time of the training step (minivgg.train.train_step) on one fixed batch."""
    from minivgg.run import DEFAULTS
    from minivgg.train import train_step
    config = {**DEFAULTS, "model": args.model, "width": args.width, "backend": args.backend,
              "batch_size": args.batch_size, "augment": "none", "val_split": 0.0}
    run = load_run(config, dataset=random_images(args.batch_size))
    x, y = next(iter(run.train_loader))
    times = []
    for i in range(args.steps + 2):                   # two warm-up steps (compilation)
        t0 = time.perf_counter()
        train_step(run.model, run.optimizer, x, y)    # returns floats: waits for the GPU
        if i >= 2:
            times.append(time.perf_counter() - t0)
    median = float(np.median(times))
    print(f"{run.model.title} width {args.width}, batch {args.batch_size}, 32x32, backend "
          f"{run.backend}: {args.batch_size / median:.0f} training images/s (median of "
          f"{len(times)} steps, {1000 * median:.0f} ms per step)")
    return 0
