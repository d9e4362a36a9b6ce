"""``minivgg train``: a run folder, claimed; the run built; epochs; the selected result."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from minivgg.commands.common import UserError, load_run
from minivgg.run import DEFAULTS, saved_config


def config_from_args(args) -> dict:
    config = {k: getattr(args, k) for k in DEFAULTS}
    config["hidden"], config["milestones"] = list(args.hidden), list(args.milestones)
    return config


def config_and_folder(args) -> tuple[dict, Path | None]:
    """The run's configuration and its folder (None: a fresh name is made later): the saved
    ones with --resume, else the flags' and --out. Cheap refusals, before any work."""
    from minivgg.files import read_json
    from minivgg.runfolder import RunFolder
    if args.resume:
        run_dir = Path(args.resume)
        missing = [n for n in ("config.json", "last.npz") if not (run_dir / n).is_file()]
        if missing:
            raise UserError(f"--resume {run_dir}: expected a run folder with config.json and "
                            f"last.npz; {' and '.join(missing)} not found")
        config = saved_config(read_json(run_dir / "config.json"))
        check_saved_config(config, run_dir / "config.json")
        return config, run_dir
    run_dir = Path(args.out) if args.out else None
    config = config_from_args(args)
    if run_dir is not None:
        RunFolder(run_dir).check()
    return config, run_dir


def train(args) -> int:
    """Check the folder (cheap refusals first), build the run, claim the folder, train."""
    from minivgg.distributed.launch import LaunchError, world
    from minivgg.runfolder import RunFolder, new_run_dir
    try:
        comm = world()                   # several ranks when started by mpirun -n N
    except LaunchError as exc:
        raise UserError(str(exc)) from None
    if comm.size > 1:
        from minivgg.commands.distributed import train_over_ranks
        return train_over_ranks(args, comm)
    if args.overfit_batch is not None:
        return overfit_batch(config_from_args(args), args.overfit_batch)
    config, run_dir = config_and_folder(args)
    run = load_run(config)
    run_dir = run_dir or new_run_dir(config["dataset"], config["model"])
    with RunFolder(run_dir, resume=bool(args.resume)):
        return train_in(run, run_dir, args)


def check_saved_config(config: dict, path: Path) -> None:
    """A config.json read back passes the checks the command line gives the same options
    (the parser's own ``type`` and ``choices``), so an edited file fails here, by name."""
    import argparse

    from minivgg.cli import add_train_args
    parser = argparse.ArgumentParser()
    add_train_args(parser)
    for action in parser._actions:
        value = config.get(action.dest)
        if value is None or action.dest in ("help", "out", "resume"):
            continue
        if isinstance(action, argparse.BooleanOptionalAction) and not isinstance(value, bool):
            raise UserError(f"{path}: {action.dest} must be true or false, got {value!r}")
        for item in value if isinstance(value, list) else [value]:
            try:
                if action.type is not None:
                    action.type(str(item))
                if action.choices is not None and item not in action.choices:
                    raise argparse.ArgumentTypeError(f"expected one of {list(action.choices)}, "
                                                     f"got {item!r}")
            except argparse.ArgumentTypeError as exc:
                raise UserError(f"{path}: {action.dest}: {exc}; correct the file, or start a "
                                "new run") from None


def train_in(run, run_dir: Path, args) -> int:
    """Train ``run`` in the claimed folder ``run_dir``; the exit status."""
    from minivgg.files import write_json
    from minivgg.train import Trainer, TrainingDiverged
    trainer = Trainer.for_run(run, run_dir, progress=not args.no_progress)
    if args.resume:
        trainer.restore(run_dir / "last.npz")
        print(f"resuming {run_dir} at epoch {trainer.epoch + 1}, batch {trainer.batch + 1}")
    else:
        write_json(run_dir / "config.json", run.config)
    c = run.config
    print(f"{run.dataset!r}\n{run.model.title} width {c['width']}: "
          f"{run.model.num_parameters():,} parameters | {c['optimizer']} lr {c['lr']} "
          f"{c['schedule']} | validation split {c['val_split']:.0%} | backend {run.backend} "
          f"| run folder {run_dir}")
    try:
        result = trainer.fit()
    except TrainingDiverged as exc:
        print(f"minivgg train: {exc}", file=sys.stderr)
        return 1
    if result["status"] == "interrupted":
        return 128 + int(trainer.stop_requested)
    report(trainer, run_dir)
    if not args.no_plots:
        from minivgg.plots import run_plots
        run_plots(run_dir, run, trainer.history, trainer.last_test)   # no second test pass
    return 0


def report(trainer, run_dir: Path) -> None:
    """The test accuracy of the selected checkpoint and of the last one, labelled."""
    last = trainer.history[-1]
    print(f"done in {trainer.elapsed:.0f} s; {run_dir}")
    if trainer.val_loader is None:
        print(f"  no validation split: the last epoch is the selected one; best.npz = "
              f"last.npz (epoch {last['epoch']}): test top-1 {last['test_top1']:.2f}%, "
              f"top-5 {last['test_top5']:.2f}%")
        return
    best = trainer.history[trainer.best_epoch - 1]
    print(f"  selected: best.npz (epoch {best['epoch']}, best validation top-1 "
          f"{best['val_top1']:.2f}%): test top-1 {best['test_top1']:.2f}%, top-5 "
          f"{best['test_top5']:.2f}%")
    print(f"  last:     last.npz (epoch {last['epoch']}, validation top-1 "
          f"{last['val_top1']:.2f}%): test top-1 {last['test_top1']:.2f}%, top-5 "
          f"{last['test_top5']:.2f}%")


def overfit_batch(config: dict, n: int, max_steps: int = 300) -> int:
    """Drive one fixed batch to 100 % training accuracy: the loop's sanity check."""
    from minivgg.backend import to_device
    from minivgg.run import train_transform
    from minivgg.train import TrainingDiverged, train_step
    run = load_run(config)
    images, labels = run.dataset.train_images[:n], run.dataset.train_labels[:n]
    padded = train_transform({**config, "augment": "none"}, run.normalize, images.shape[2])
    x = padded(images, None)
    x, y = to_device(x.astype(np.float32), run.device), to_device(labels, run.device)
    k = len(run.classes)
    print(f"overfitting one batch of {len(y)} images (first loss should be near "
          f"ln({k}) = {math.log(k):.3f})")
    for step in range(1, max_steps + 1):
        try:
            loss, correct = train_step(run.model, run.optimizer, x, y)
        except TrainingDiverged as exc:
            print(f"FAILED: training diverged at step {step}: {exc}; try a smaller --lr")
            return 1
        acc = correct / len(y)
        if acc == 1.0 and loss < 0.05:
            print(f"step {step:4d}: loss {loss:.4f}, batch accuracy 100.0%\n"
                  f"ok: 100% on the batch after {step} steps")
            return 0
        if step == 1 or step % 10 == 0:
            print(f"step {step:4d}: loss {loss:.4f}, batch accuracy {100 * acc:.1f}%")
    print(f"FAILED: {100 * acc:.1f}% after {max_steps} steps (loss {loss:.4f}); something in "
          "the layers, the loss or the optimizer is wrong, or --lr is far off")
    return 1
