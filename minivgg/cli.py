"""The ``minivgg`` command: train, eval, predict, summary, gradcheck, bench.

    minivgg train                               CIFAR-10, small VGG-A with batch norm, SGD
    minivgg train --dataset shapes --epochs 3   offline, synthetic, a minute on a laptop
    minivgg train --resume runs/cifar10-A-...   continue a run exactly where it stopped
    minivgg eval runs/cifar10-A-...             test loss, top-1, top-5, per-class accuracy
    minivgg predict runs/cifar10-A-... cat.png  top-5 classes of your own pictures
    minivgg summary vgg16 --input 224           layers, shapes, parameters, MACs
    minivgg gradcheck vgg11                     finite differences through a whole VGG
    minivgg bench                               training images per second here
"""

from __future__ import annotations

import argparse
import os
import sys

from minivgg.commands.flags import (
    FRACTION,
    NON_NEGATIVE,
    NON_NEGATIVE_NUMBER,
    POSITIVE,
    POSITIVE_NUMBER,
    input_size,
    model_config,
)
from minivgg.run import AUGMENTS, DEFAULTS, OPTIMIZERS
from minivgg.schedules import SCHEDULES

DATASETS = ("cifar10", "cifar100", "fashion-mnist", "mnist", "shapes")
BACKENDS = ("auto", "numpy", "numba", "cupy")


class Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line: what was wrong, and where the help is."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _flag(p, name, help_, **kw):
    """An option whose default comes from DEFAULTS and is shown in --help."""
    key = name.lstrip("-").replace("-", "_")
    kw.setdefault("default", DEFAULTS[key])
    p.add_argument(name, help=help_ + " (default: %(default)s)", **kw)


def add_train_args(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("data")
    _flag(d, "--dataset", "data set", choices=DATASETS)
    _flag(d, "--data-dir", "folder holding the data set (else $MINIVGG_DATA, else "
          "~/.cache/minivgg; CIFAR is downloaded there when missing)")
    _flag(d, "--limit", "use only the first N train and test images: a quick run", type=POSITIVE)
    _flag(d, "--val-split", "share of the training images held out, with --seed, to select "
          "best.npz and drive 'plateau' (0: train on all, the last epoch is selected)",
          type=FRACTION)
    _flag(d, "--augment", "training augmentation: random 32x32 crops of the padded image "
          "and/or horizontal flips", choices=AUGMENTS)
    _flag(d, "--crop-padding", "pixels of zero padding around an image before the random "
          "crop", type=NON_NEGATIVE)
    m = p.add_argument_group("model")
    _flag(m, "--model", "VGG configuration of the paper's Table 1: A-E, A-LRN or vgg11, "
          "vgg13, vgg16, vgg19; or a custom list of channels and M (max-pool), e.g. "
          "16,M,32,M,64,64,M,128,128,M for 28x28 inputs", type=model_config)
    _flag(m, "--width", "multiplies every convolution's channels (0.25: 16..128)",
          type=POSITIVE_NUMBER)
    _flag(m, "--batch-norm", "batch normalisation after each convolution",
          action=argparse.BooleanOptionalAction)
    _flag(m, "--head", "classifier: 'cifar' (one Dense layer, or --hidden ones) or the "
          "paper's 'imagenet' 4096-4096 head", choices=("cifar", "imagenet"))
    _flag(m, "--hidden", "hidden Dense sizes of the cifar head, e.g. --hidden 512",
          type=POSITIVE, nargs="*")
    _flag(m, "--sync-bn", "under mpirun: batch-norm statistics of the whole global batch, "
          "over all ranks, instead of each rank's shard", action=argparse.BooleanOptionalAction)
    _flag(m, "--dropout", "dropout probability after each hidden Dense layer", type=FRACTION)
    _flag(m, "--init", "weights: 'he' (torchvision) or 'paper' (N(0, 0.01))",
          choices=("he", "paper"))
    _flag(m, "--input-size", "network input side, a multiple of 32; smaller images are "
          "zero-padded", type=input_size)
    o = p.add_argument_group("optimisation")
    _flag(o, "--epochs", "passes over the training set", type=POSITIVE)
    _flag(o, "--batch-size", "images per step", type=POSITIVE)
    _flag(o, "--eval-batch-size", "images per batch when evaluating", type=POSITIVE)
    _flag(o, "--lr", "learning rate (the paper: 0.01 at batch 256, without batch norm)",
          type=POSITIVE_NUMBER)
    _flag(o, "--optimizer", "sgd (momentum, weight decay) or adam", choices=sorted(OPTIMIZERS))
    _flag(o, "--momentum", "SGD momentum (the paper: 0.9)", type=FRACTION)
    _flag(o, "--nesterov", "Nesterov momentum", action=argparse.BooleanOptionalAction)
    _flag(o, "--weight-decay", "L2 weight decay (the paper: 5e-4)", type=NON_NEGATIVE_NUMBER)
    _flag(o, "--decay-all", "decay biases and batch-norm parameters too",
          action=argparse.BooleanOptionalAction)
    _flag(o, "--schedule", "learning-rate schedule; 'plateau' is the paper's (divide by 10 "
          "when validation accuracy stops improving)", choices=SCHEDULES)
    _flag(o, "--warmup", "epochs of linear learning-rate warm-up", type=NON_NEGATIVE_NUMBER)
    _flag(o, "--milestones", "epochs where 'multistep' multiplies by --gamma", type=POSITIVE,
          nargs="*")
    _flag(o, "--gamma", "factor of step, multistep and plateau", type=POSITIVE_NUMBER)
    _flag(o, "--step", "epochs between reductions of 'step'", type=POSITIVE)
    _flag(o, "--patience", "epochs without improvement before 'plateau' reduces",
          type=NON_NEGATIVE)
    r = p.add_argument_group("run")
    _flag(r, "--backend", "array backend", choices=BACKENDS)
    _flag(r, "--seed", "seeds initialisation, shuffling, augmentation, dropout and the "
          "validation split", type=NON_NEGATIVE)
    _flag(r, "--prefetch", "batches prepared ahead in a background thread", type=NON_NEGATIVE)
    r.add_argument("--out", help="run folder, new or empty (default: a fresh "
                   "runs/<dataset>-<model>-<time>-<random>)")
    r.add_argument("--resume", metavar="RUN", help="continue the run in folder RUN from its "
                   "last.npz, with its config.json (other options are ignored)")
    r.add_argument("--overfit-batch", type=POSITIVE, nargs="?", const=32, metavar="N",
                   help="sanity check: train on one batch of N images (default 32) until "
                   "it is classified 100%% right; writes no run folder")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--no-plots", action="store_true", help="skip the figures at the end")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="minivgg", description="VGG networks from scratch: train, evaluate, inspect.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n")[1])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a VGG; writes a run folder",
                       description="Train a VGG and write config.json, metrics.csv, last.npz, "
                       "best.npz and figures to one run folder, which the run holds alone. "
                       "best.npz is selected on a validation split of the training images; "
                       "the test set is only reported. Ctrl-C or SIGTERM saves and stops; "
                       "--resume continues exactly.")
    add_train_args(p)

    p = sub.add_parser("eval", help="evaluate a run's checkpoint on its test set",
                       description="Test loss, top-1 and top-5 accuracy and per-class "
                       "accuracy of a run; redraws the confusion matrix and predictions.")
    p.add_argument("run", help="run folder")
    p.add_argument("--checkpoint", default="best", choices=("best", "last"))
    p.add_argument("--data-dir", help="override the run's data folder")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--no-plots", action="store_true")

    p = sub.add_parser("predict", help="classify image files with a trained run or "
                       "ImageNet weights",
                       description="Top classes of pictures: with a run folder, each resized "
                       "to the network's input as the training images were; with --weights "
                       "(vgg16, vgg19_bn, ... or a .pth/.safetensors file), torchvision's "
                       "ImageNet preprocessing and the 1000 ImageNet classes.")
    p.add_argument("inputs", nargs="+", metavar="RUN_AND_IMAGES",
                   help="a run folder (or .npz checkpoint) then picture files; with "
                   "--weights, picture files only")
    p.add_argument("--weights", metavar="NAME_OR_FILE", help="torchvision's trained VGG "
                   "weights: vgg11..vgg19(_bn), downloaded once into the cache, or a file")
    p.add_argument("--checkpoint", default="best", choices=("best", "last"))
    p.add_argument("--top", type=POSITIVE, default=5, help="classes to show (default: 5)")
    p.add_argument("--backend", default="auto", choices=BACKENDS)

    p = sub.add_parser("explain", help="saliency, SmoothGrad or Grad-CAM of a picture",
                       description="Why the network chose its class: the gradient of the "
                       "class score through the hand-written backward passes, drawn over "
                       "the picture beside the top classes.")
    p.add_argument("source", metavar="RUN_OR_WEIGHTS", help="a run folder or .npz "
                   "checkpoint, or ImageNet weights (vgg16, ... or a .pth/.safetensors file)")
    p.add_argument("image", help="a picture file")
    p.add_argument("--method", default="gradcam", choices=("saliency", "smoothgrad",
                                                           "gradcam"))
    p.add_argument("--layer", metavar="BLOCK", help="Grad-CAM's block: a number from 1 or "
                   "a layer path such as features.28 (default: the last block)")
    p.add_argument("--class", dest="k", type=NON_NEGATIVE, metavar="K",
                   help="the class to explain (default: the predicted one)")
    p.add_argument("--checkpoint", default="best", choices=("best", "last"))
    p.add_argument("--out", default="explain.png", help="the figure (default: explain.png)")
    p.add_argument("--backend", default="auto", choices=BACKENDS)

    p = sub.add_parser("summary", help="table of a VGG's layers, shapes, parameters, MACs",
                       description="Worked out from the configuration alone: no weights are "
                       "allocated, so any size is summarised at once.")
    p.add_argument("model", nargs="?", default="vgg16", type=model_config,
                   help="A-E, A-LRN, vgg11..vgg19, or a comma list such as 16,M,32,M")
    p.add_argument("--input", type=input_size, default=224,
                   help="input side, a multiple of 32 (default: 224)")
    p.add_argument("--classes", type=POSITIVE, default=1000, help="outputs (default: 1000)")
    p.add_argument("--head", default=None, choices=("cifar", "imagenet"),
                   help="default: imagenet at 224 and above, else cifar")
    p.add_argument("--width", type=POSITIVE_NUMBER, default=1.0,
                   help="channel multiplier (default: 1)")
    p.add_argument("--batch-norm", action="store_true")
    p.add_argument("--plot", metavar="FILE.png", help="also draw the network's blocks with "
                   "their output shapes and parameters")

    p = sub.add_parser("gradcheck", help="finite-difference check of a whole small VGG",
                       description="Builds the configuration in float64 at reduced width and "
                       "input size, on the device --backend selects, and compares backward "
                       "with central differences.")
    p.add_argument("model", nargs="?", default="vgg11", type=model_config)
    p.add_argument("--width", type=POSITIVE_NUMBER, default=1 / 16,
                   help="default: 1/16 (4..32 channels)")
    p.add_argument("--input", type=input_size, default=32, help="input side (default: 32)")
    p.add_argument("--batch-norm", action="store_true")
    p.add_argument("--backend", default="numpy", choices=BACKENDS)

    p = sub.add_parser("bench", help="training throughput (images per second) here",
                       description="Times training steps of a VGG on random data.")
    p.add_argument("--model", default="A", type=model_config)
    p.add_argument("--width", type=POSITIVE_NUMBER, default=0.25, help="default: 0.25")
    p.add_argument("--batch-size", type=POSITIVE, default=64, help="default: 64")
    p.add_argument("--steps", type=POSITIVE, default=10, help="timed steps (default: 10)")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    return parser


def main(argv=None) -> int:
    """Run one sub-command; problems the user can fix are one line on stderr, exit 2."""
    args = build_parser().parse_args(argv)
    from minivgg import commands
    from minivgg.backend import BackendUnavailable
    from minivgg.files import RunFileError, WriteError
    from minivgg.runfolder import RunFolderError
    handler = {"train": commands.train, "eval": commands.evaluate, "predict": commands.predict,
               "summary": commands.summary, "gradcheck": commands.gradcheck,
               "bench": commands.bench, "explain": commands.explain}[args.command]
    try:
        code = handler(args)
        sys.stdout.flush()                   # a closed pipe shows up here, not at exit
        return code
    except BrokenPipeError:
        # The reader left (`minivgg eval run | head -1`): stop quietly. Python's docs
        # (signal, "Note on SIGPIPE") redirect stdout so the final flush cannot fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (commands.UserError, RunFileError, RunFolderError, WriteError,
            BackendUnavailable) as exc:
        print(f"minivgg {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:                # a second Ctrl-C while training, or any other
        print(f"\nminivgg {args.command}: aborted; nothing more was saved", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
