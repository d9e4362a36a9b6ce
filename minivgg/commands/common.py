"""What the sub-commands share: the user-facing error, and building a run with messages
that say what to do when the data or the backend is not there."""

from __future__ import annotations

from pathlib import Path

OFFLINE_HELP = ("Point --data-dir (or the MINIVGG_DATA variable) at a folder that holds it, or "
                "train offline on the synthetic data set: minivgg train --dataset shapes")


class UserError(Exception):
    """A problem the user can fix; printed as one line, without a traceback."""


def load_run(config: dict, **kw):
    """``minivgg.run.build_run(config, **kw)``, its failures turned into UserErrors."""
    from minivgg.backend import BackendUnavailable
    from minivgg.data import DownloadError
    from minivgg.data.download import cache_dir
    from minivgg.run import build_run
    try:
        return build_run(config, **kw)
    except BackendUnavailable as exc:
        raise UserError(str(exc)) from None
    except (DownloadError, OSError) as exc:
        where = cache_dir(config.get("data_dir"))
        hint = ("\nTo train offline now: minivgg train --dataset shapes" if "--data-dir" in
                str(exc) else f"\n{OFFLINE_HELP}")
        raise UserError(f"could not load the data set {config['dataset']!r}: it is not in "
                        f"{where} and could not be fetched.\n{exc}{hint}") from None
    except ValueError as exc:          # damaged data files, settings that do not fit
        raise UserError(str(exc)) from None


def checkpoint_path(run: str, which: str) -> Path:
    """A run folder and "best"/"last", or an .npz file itself -> the checkpoint's path."""
    path = Path(run)
    if path.is_dir():
        path = path / f"{which}.npz"
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}; expected a run folder written by "
                        "minivgg train (with best.npz and last.npz) or an .npz file")
    return path


def run_config(ckpt, **overrides) -> dict:
    """The configuration a checkpoint was trained with, with ``overrides`` (not None)."""
    from minivgg.run import saved_config
    if not isinstance(ckpt.facts.config, dict):
        raise UserError(f"{ckpt.path}: records no run configuration (not written by minivgg "
                        "train?); it cannot be evaluated with its data")
    return {**saved_config(ckpt.facts.config),
            **{k: v for k, v in overrides.items() if v is not None}}
