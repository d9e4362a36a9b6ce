"""Every figure is a real PNG file of a sensible size, written atomically."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from minivgg.models import vgg
from minivgg.plots import (
    block_outputs,
    confusion_matrix,
    first_conv_weight,
    mosaic,
    plot_confusion,
    plot_curves,
    plot_feature_maps,
    plot_filters,
    plot_predictions,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """Check the signature and the IHDR chunk; return (width, height)."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG file"
    assert data[12:16] == b"IHDR" and data[-8:-4] == b"IEND"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def check_png(path, min_side=150):
    width, height = png_size(path)
    assert min_side <= width <= 4000 and min_side <= height <= 4000, (path.name, width, height)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def model():
    return vgg("A", 10, 32, head="cifar", width=0.125, batch_norm=True, seed=0)


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions make, kept instead of saved."""
    import minivgg.plots as plots
    kept = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: kept.append(fig) or path)
    return kept


def margins(fig) -> np.ndarray:
    """Inches of white between what ``fig`` draws (every text, tick and axes, as the PNG
    renderer lays them out) and its left, bottom, right and top edges: negative = cut off."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    drawn = fig.get_tightbbox(canvas.get_renderer())
    width, height = fig.get_size_inches()
    return np.array([drawn.x0, drawn.y0, width - drawn.x1, height - drawn.y1])


def test_curves(tmp_path):
    history = [{"epoch": e, "train_loss": 2 / e, "test_loss": 2.2 / e, "train_top1": 30 + e,
                "test_top1": 28 + e} for e in range(1, 6)]
    check_png(plot_curves(history, tmp_path / "curves.png"))


def test_curves_show_the_validation_split_when_there_is_one(tmp_path, figures):
    history = [{"epoch": e, "train_loss": 2 / e, "val_loss": 2.1 / e, "test_loss": 2.2 / e,
                "train_top1": 30 + e, "val_top1": 29 + e, "test_top1": 28 + e}
               for e in range(1, 4)]
    plot_curves(history, tmp_path / "curves.png")
    legends = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in figures[0].axes]
    assert legends == [["train", "validation", "test"]] * 2


def test_confusion_matrix_counts_and_plot(tmp_path):
    labels, predicted = np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 2, 0])
    counts = confusion_matrix(labels, predicted, 3)
    np.testing.assert_array_equal(counts, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    check_png(plot_confusion(labels, predicted, ["cat", "dog", "frog"],
                             tmp_path / "confusion.png"))


def test_predictions_grid_grey_and_colour(tmp_path):
    rng = np.random.default_rng(0)
    for channels in (1, 3):
        images = rng.integers(0, 256, (20, channels, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, 20)
        check_png(plot_predictions(images, labels, labels[::-1], [str(i) for i in range(10)],
                                   tmp_path / f"pred{channels}.png"))


def test_filters_and_feature_maps(model, tmp_path):
    weight = first_conv_weight(model)
    assert weight.shape == (8, 3, 3, 3)
    check_png(plot_filters(weight, tmp_path / "filters.png"), min_side=50)
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    outs = block_outputs(model, x)
    assert [m.shape for _, m in outs] == [(8, 16, 16), (16, 8, 8), (32, 4, 4), (64, 2, 2),
                                          (64, 1, 1)]
    image = np.zeros((3, 32, 32), np.uint8)
    check_png(plot_feature_maps(model, image, x, tmp_path / "feature_maps.png"))


def test_feature_map_rows_show_the_strongest_channels(model, tmp_path, figures):
    """Blocks with maps larger than 1x1 are pictures; a 1x1 block is a bar per channel whose
    height is that channel's value, for the channels with the largest values."""
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    plot_feature_maps(model, np.zeros((3, 32, 32), np.uint8), x, tmp_path / "f.png",
                      per_block=4)
    outs = block_outputs(model, x)
    map_axes = [ax for ax in figures[0].axes if ax.get_label() == "maps"]   # one per block
    assert len(map_axes) == len(outs) == 5
    for ax, (_, maps) in zip(map_axes[:4], outs[:4]):
        assert len(ax.images) == 1 and not ax.patches
        assert ax.images[0].get_array().shape[0] == maps.shape[1]
    last, values = map_axes[4], outs[4][1].reshape(-1)
    top = np.argsort(-values, kind="stable")[:4]     # strongest first
    assert not last.images
    heights = [bar.get_height() for bar in last.patches]
    np.testing.assert_allclose(heights, values[top], rtol=1e-6)
    assert [t.get_text() for t in last.get_xticklabels()] == [str(c) for c in top]


def test_mosaic_places_each_picture_in_its_cell_with_white_between():
    a, b = np.zeros((2, 2, 3)), np.full((2, 2), 0.5)          # a colour and a grey picture
    grid = mosaic([a, b, a], cols=2, gap=1, below=2)
    assert grid.shape == (2 * (2 + 1 + 2) - 1, 2 * 3 - 1, 4) and (grid[..., 3] == 1).all()
    rgb = grid[..., :3]                                       # RGBA, opaque everywhere
    np.testing.assert_array_equal(rgb[0:2, 0:2], a)
    np.testing.assert_array_equal(rgb[0:2, 3:5], np.full((2, 2, 3), 0.5))
    np.testing.assert_array_equal(rgb[5:7, 0:2], a)
    assert (rgb[2:5] == 1).all() and (rgb[:, 2] == 1).all() and (rgb[5:, 3:] == 1).all()


@pytest.mark.parametrize("k", [2, 10, 26, 31, 100])
def test_confusion_labels_fit_in_the_figure_for_any_number_of_classes(figures, k):
    """The figure is laid out by hand from the sizes of its texts, not cropped to them: the
    turned class names (some of 12 W, the widest letter), the colour bar's label and the
    title all lie inside it, with little white beyond (names are shown up to 30 classes)."""
    names = ["W" * 12 if i % 7 == 3 else f"class {i}" for i in range(k)]
    rng = np.random.default_rng(k)
    labels = rng.integers(0, k, 500)
    plot_confusion(labels, np.where(rng.random(500) < 0.5, labels, 0), names, "c.png")
    white = margins(figures[0])
    assert (white >= 0).all() and (white < 0.3).all(), white


@pytest.mark.parametrize("epochs, scale", [(1, 1.0), (3, 1e-5), (40, 1e4), (1200, 1.0)])
def test_curves_labels_fit_in_the_figure(figures, epochs, scale):
    """Tick labels of any width (tiny and huge losses) and any number of epochs fit."""
    history = [{"epoch": e, "train_loss": 2.3 + scale / e, "test_loss": 2.3 + scale / e / 2,
                "train_top1": 10 + e / epochs, "test_top1": 9 + e / epochs}
               for e in range(1, epochs + 1)]
    plot_curves(history, "c.png")
    white = margins(figures[0])
    assert (white >= 0).all() and (white < 0.4).all(), white


def test_the_other_figures_fit_in_theirs(model, figures):
    rng = np.random.default_rng(0)
    names = ["aquarium_fish", "sweet_pepper", "automobile"]
    images = rng.integers(0, 256, (18, 3, 32, 32), dtype=np.uint8)
    plot_predictions(images, rng.integers(0, 3, 18), rng.integers(0, 3, 18), names, "p.png")
    plot_filters(first_conv_weight(model), "f.png")
    x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    plot_feature_maps(model, np.zeros((3, 32, 32), np.uint8), x, "m.png")
    for fig in figures:
        assert (margins(fig) >= 0).all(), fig.texts[0].get_text()
