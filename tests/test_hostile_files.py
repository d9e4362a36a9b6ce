"""Damaged run files name themselves: a checkpoint of random bytes, truncated, empty,
damaged inside, without settings, with pickled objects or settings that do not fit its
arrays; a config.json that is not JSON or no longer passes the command line's checks. Each
is one line -- which file, what is wrong, what to do -- exit 2, no traceback, nothing
changed; and never numpy's advice to pass allow_pickle.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hostile import RESUME, copy_of, finish_a_run, one_line, snapshot

from minivgg.cli import main


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    return finish_a_run(tmp_path_factory.mktemp("damaged"))


@pytest.fixture
def run_copy(finished_run, tmp_path):
    return copy_of(finished_run, tmp_path)


def rewrite(path: Path, meta=None, **arrays) -> None:
    """Rewrite a checkpoint with another meta and/or extra arrays (object arrays pickled)."""
    with np.load(path, allow_pickle=False) as npz:
        content = {k: npz[k] for k in npz.files}
    if meta is not None:
        content["meta"] = np.array(meta if isinstance(meta, str) else json.dumps(meta))
    content.update(arrays)
    with open(path, "wb") as f:
        np.savez(f, **content)


def meta_of(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as npz:
        return json.loads(str(npz["meta"]))


def damage(kind: str, path: Path) -> None:
    data = path.read_bytes()
    if kind == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    elif kind == "truncated":
        path.write_bytes(data[:len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "damaged inside":
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes(64) + data[middle + 64:])
    elif kind == "no settings":
        rewrite(path, {k: v for k, v in meta_of(path).items() if k != "spec"})
    elif kind == "bad meta":
        rewrite(path, "{not json")
    elif kind == "pickled objects":
        rewrite(path, **{"model.extra": np.array([{"os": "system"}], dtype=object)})
    elif kind == "no normalisation":
        rewrite(path, {**meta_of(path), "normalize": None})
    elif kind == "foreign settings":
        rewrite(path, {**meta_of(path), "spec": {**meta_of(path)["spec"], "trojan": 1}})


KINDS = ["random bytes", "truncated", "empty", "damaged inside", "no settings", "bad meta",
         "pickled objects", "foreign settings", "no normalisation"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_best_npz_names_itself_and_the_way_out(kind, run_copy, capsys):
    damage(kind, run_copy / "best.npz")
    before = snapshot(run_copy)
    assert main(["eval", str(run_copy), "--no-plots", "--backend", "numba"]) == 2
    line = one_line(capsys)
    assert str(run_copy / "best.npz") in line and "delete it" in line, line
    assert "last.npz" in line, line                           # the other checkpoint
    assert "allow_pickle" not in line
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("kind", ["random bytes", "truncated"])
def test_a_damaged_last_npz_stops_resume_and_predict_names_best(kind, run_copy, tmp_path,
                                                                 capsys):
    damage(kind, run_copy / "last.npz")
    before = snapshot(run_copy)
    assert main(["train", "--resume", str(run_copy), *RESUME]) == 2
    line = one_line(capsys)
    assert str(run_copy / "last.npz") in line and "best.npz" in line
    assert main(["predict", str(run_copy), str(tmp_path / "x.png"), "--checkpoint", "last",
                 "--backend", "numba"]) == 2
    assert "last.npz" in one_line(capsys)
    assert snapshot(run_copy) == before


def test_a_checkpoint_claiming_a_huge_network_is_refused_before_building_it(run_copy, capsys,
                                                                           monkeypatch):
    meta = meta_of(run_copy / "best.npz")
    rewrite(run_copy / "best.npz", {**meta, "spec": {**meta["spec"], "config": "E",
                                                     "width": 4.0}})
    from minivgg.models import VGG

    def never(*args, **kwargs):
        raise AssertionError("a network was built from unchecked settings")
    monkeypatch.setattr(VGG, "__init__", never)
    assert main(["eval", str(run_copy), "--no-plots", "--backend", "numba"]) == 2
    line = one_line(capsys)
    assert "best.npz" in line and "do not match the model settings" in line


def test_a_bad_config_json_names_itself(run_copy, capsys):
    (run_copy / "config.json").write_text('{"epochs": 2,')
    before = snapshot(run_copy)
    assert main(["train", "--resume", str(run_copy), *RESUME]) == 2
    line = one_line(capsys)
    assert "config.json" in line and "not valid JSON" in line
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("key,value", [("epochs", 0), ("lr", "fast"), ("batch_norm", "yes"),
                                       ("model", "16,X"), ("augment", "rotate"),
                                       ("milestones", [-1])])
def test_resume_checks_config_json_as_the_command_line_would(key, value, run_copy, capsys):
    config = json.loads((run_copy / "config.json").read_text())
    (run_copy / "config.json").write_text(json.dumps({**config, key: value}))
    before = snapshot(run_copy)
    assert main(["train", "--resume", str(run_copy), *RESUME]) == 2
    line = one_line(capsys)
    assert "config.json" in line and key in line and repr(value if not isinstance(value, list)
                                                         else value[0]).strip("'") in line
    assert snapshot(run_copy) == before


def test_resume_refuses_a_config_that_no_longer_builds_the_saved_model(run_copy, capsys):
    config = json.loads((run_copy / "config.json").read_text())
    (run_copy / "config.json").write_text(json.dumps({**config, "width": 0.25}))
    before = snapshot(run_copy)
    assert main(["train", "--resume", str(run_copy), *RESUME]) == 2
    line = one_line(capsys)
    assert "last.npz" in line and "width=0.125" in line and "width=0.25" in line
    assert snapshot(run_copy) == before


def test_predict_names_a_file_that_is_not_a_picture(finished_run, tmp_path, capsys):
    (tmp_path / "notes.png").write_text("not a picture")
    assert main(["predict", str(finished_run), str(tmp_path / "notes.png"), "--backend",
                 "numba"]) == 2
    assert "notes.png" in one_line(capsys)
