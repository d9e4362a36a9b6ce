"""ImageNet preprocessing as torchvision does it, the class names, top-k."""

from __future__ import annotations

import numpy as np
import pytest

# --- ImageNet preprocessing and class names ----------------------------------------------

def test_class_names_are_the_1000_in_torchvisions_order():
    from minivgg.imagenet import class_names
    names = class_names()
    assert len(names) == 1000 and all(n and n == n.strip() for n in names)
    known = {0: "tench", 1: "goldfish", 207: "golden retriever", 281: "tabby",
             285: "Egyptian cat", 409: "analog clock", 457: "bow tie",
             652: "military uniform", 999: "toilet tissue"}
    assert {i: names[i] for i in known} == known
    # torchvision's list repeats two names, at these indices
    assert [i for i, n in enumerate(names) if n in ("crane", "maillot")] == [134, 517, 638, 639]


def test_preprocess_resizes_the_shorter_side_crops_the_centre_and_normalises():
    from PIL import Image

    from minivgg.imagenet import MEAN, STD, center_crop, preprocess, resize_shorter
    assert resize_shorter(Image.new("RGB", (400, 300))).size == (341, 256)
    assert resize_shorter(Image.new("RGB", (300, 1000))).size == (256, 853)
    x = preprocess(Image.new("RGB", (500, 300), (10, 128, 250)))
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32
    expected = (np.array([10, 128, 250]) / 255 - np.array(MEAN)) / np.array(STD)
    np.testing.assert_allclose(x[0, :, 100, 100], expected, rtol=1e-6)
    assert np.ptp(x, axis=(2, 3)).max() < 1e-6
    # a 300x256 photo is not resized; the crop starts at column round(76 / 2) = 38
    pixels = np.zeros((256, 300, 3), np.uint8)
    pixels[:, 38] = 255
    assert center_crop(resize_shorter(Image.fromarray(pixels))).size == (224, 224)
    x = preprocess(pixels)
    assert np.allclose(x[0, :, :, 0], ((1 - np.array(MEAN)) / np.array(STD))[:, None])
    assert np.allclose(x[0, :, :, 1], (-np.array(MEAN) / np.array(STD))[:, None])


def test_preprocess_reads_files_in_any_colour_mode(tmp_path):
    from PIL import Image

    from minivgg.imagenet import preprocess, unnormalize
    Image.new("L", (240, 260), 77).save(tmp_path / "grey.png")
    Image.new("RGBA", (240, 260), (77, 77, 77, 9)).save(tmp_path / "rgba.png")
    grey, rgba = (preprocess(tmp_path / f) for f in ("grey.png", "rgba.png"))
    np.testing.assert_array_equal(grey, rgba)
    np.testing.assert_allclose(unnormalize(grey), 77 / 255, atol=1e-6)


def test_top_k_is_a_stable_softmax_with_names():
    from minivgg.imagenet import top_k
    logits = np.full((1, 1000), -5.0, np.float32)
    logits[0, [207, 281, 999]] = [10_000.0, 9_999.0, 9_998.0]   # exp would overflow
    best = top_k(logits, 3)
    assert [(i, n) for i, n, _ in best] == [(207, "golden retriever"), (281, "tabby"),
                                            (999, "toilet tissue")]
    e = np.exp([0.0, -1.0, -2.0])
    np.testing.assert_allclose([p for *_, p in best], e / e.sum(), rtol=1e-12)
    assert top_k(np.zeros(4), 2, names=list("abcd")) == [(0, "a", 0.25), (1, "b", 0.25)]
    with pytest.raises(ValueError, match=r"top_k: expected the logits of one image"):
        top_k(np.zeros((2, 1000)))
