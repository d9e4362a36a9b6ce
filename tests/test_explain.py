"""Explanations from the backward passes (minivgg.explain) and their figures.

What is measured:

- the class-score gradient against centred finite differences (float64, eval-mode BN);
- saliency, SmoothGrad, Grad-CAM (every block), FGSM and the bilinear upsampling against
  PyTorch autograd on the same weights (float64, 1e-10);
- FGSM flips most correctly classified images of a briefly trained network, while noise of
  the same size and random signs flips almost none;
- explanations leave the modes, the running statistics and the first layer's settings alone;
- dense evaluation's score map has one score vector per 32-pixel step, averaging to
  to_dense_eval(average=True)'s scores;
- every figure is a real PNG.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

import minivgg as mv
from minivgg import explain as ex
from minivgg.gradcheck import relative_error
from minivgg.layers import BatchNorm2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU
from minivgg.models import Sequential, VGGSettings, vgg
from minivgg.models.dense_eval import to_dense_eval

TOL = 1e-10


def small_vgg(batch_norm=True, seed=0, **kw):
    """VGG-A at 1/16 width for 32x32 inputs, float64, with non-trivial batch-norm statistics
    (so evaluation-mode BN is not the identity), in evaluation mode."""
    model = vgg("A", 10, 32, head="cifar", width=1 / 16, batch_norm=batch_norm, seed=seed,
                dtype=np.float64, **kw)
    rng = np.random.default_rng(seed + 1)
    for _, layer in model.named_layers():
        if isinstance(layer, BatchNorm2D):
            c = layer.num_features
            layer.running_mean[...] = rng.normal(0, 0.3, c)
            layer.running_var[...] = rng.uniform(0.5, 2.0, c)
            layer.gamma.data[...] = rng.uniform(0.5, 1.5, c)
            layer.beta.data[...] = rng.normal(0, 0.2, c)
    return model.eval()


def image(seed=2, size=32):
    return np.random.default_rng(seed).standard_normal((1, 3, size, size))


def score(model, x, k):
    with mv.no_grad():
        return float(model.forward(x, training=False)[0, k])


# -- finite differences ------------------------------------------------------------------------

def test_class_score_gradient_equals_finite_differences():
    # h = 1e-4: the error here is rounding (it grows as 1/h: 1.4e-9 at 1e-5), not curvature
    model, x, k, h = small_vgg(), image(), 3, 1e-4
    g = ex.class_score_gradient(model, x, k)
    assert g.shape == x.shape and g.dtype == np.float64
    idx = np.random.default_rng(0).choice(x.size, 40, replace=False)
    numeric = []
    for i in idx:
        plus, minus = x.copy(), x.copy()
        plus.reshape(-1)[i] += h
        minus.reshape(-1)[i] -= h
        numeric.append((score(model, plus, k) - score(model, minus, k)) / (2 * h))
    err = relative_error(g.reshape(-1)[idx], numeric)
    assert err < 1e-8, err                          # measured: 1.4e-10
    assert np.array_equal(ex.saliency(model, x, k), np.abs(g[0]).max(axis=0))


def test_gradient_of_a_batch_is_each_rows_own():
    model = small_vgg()
    x = np.concatenate([image(2), image(3)])
    both = ex.class_score_gradient(model, x, np.array([1, 7]))
    assert np.allclose(both[:1], ex.class_score_gradient(model, x[:1], 1), rtol=0, atol=1e-13)
    assert np.allclose(both[1:], ex.class_score_gradient(model, x[1:], 7), rtol=0, atol=1e-13)


def test_smoothgrad_without_noise_is_saliency_and_is_reproducible():
    model, x = small_vgg(), image()
    assert np.allclose(ex.smoothgrad(model, x, 3, n=3, sigma=0.0), ex.saliency(model, x, 3),
                       rtol=0, atol=1e-13)
    a = ex.smoothgrad(model, x, 3, n=5, seed=1, batch_size=2)
    assert np.array_equal(a, ex.smoothgrad(model, x, 3, n=5, seed=1, batch_size=2))
    assert a.shape == (32, 32) and not np.allclose(a, ex.saliency(model, x, 3))


# -- PyTorch ---------------------------------------------------------------------------------

def torch_mirror(torch, model):
    """The same network in plain torch; parameters copied under the same state-dict keys."""
    nn = torch.nn

    def convert(layer):
        if isinstance(layer, Sequential):
            return nn.Sequential(OrderedDict((n, convert(m))
                                             for n, m in zip(layer.names, layer.layers)))
        if isinstance(layer, Conv2D):
            return nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                             layer.stride, layer.padding)
        if isinstance(layer, BatchNorm2D):
            return nn.BatchNorm2d(layer.num_features, eps=layer.eps)
        if isinstance(layer, Dense):
            return nn.Linear(layer.in_features, layer.out_features)
        if isinstance(layer, MaxPool2D):
            return nn.MaxPool2d(layer.kernel_size, layer.stride)
        simple = {ReLU: nn.ReLU, Flatten: nn.Flatten, Dropout: lambda: nn.Dropout(layer.p)}
        return simple[type(layer)]()

    net = convert(model).double()
    state = {}
    for key, value in model.state_dict().items():
        layer = dict(model.named_layers())[key.rsplit(".", 1)[0]]
        if isinstance(layer, Dense) and key.endswith(".weight"):
            value = value.T                                   # ours (in, out), torch (out, in)
        key = key.replace(".gamma", ".weight").replace(".beta", ".bias")
        state[key] = torch.tensor(np.ascontiguousarray(value))
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    return net.eval()


def torch_input_gradient(torch, net, x, k):
    t = torch.tensor(x, requires_grad=True)
    net(t)[0, k].backward()
    return t.grad.numpy()


def close(ours, theirs):
    theirs = np.asarray(theirs)
    err = np.abs(ours - theirs).max() / max(1e-300, np.abs(theirs).max())
    assert err < TOL, err
    return err


@pytest.mark.crosscheck
def test_saliency_and_smoothgrad_equal_pytorch():
    torch = pytest.importorskip("torch")
    model, x = small_vgg(), image()
    net = torch_mirror(torch, model)
    with torch.no_grad():
        close(model.forward(x, training=False), net(torch.tensor(x)).numpy())
    for k in (0, 3, 9):
        g = torch_input_gradient(torch, net, x, k)
        close(ex.class_score_gradient(model, x, k), g)
        close(ex.saliency(model, x, k), np.abs(g[0]).max(axis=0))
    n, sigma = 4, 0.2
    noise = np.random.default_rng(5).standard_normal((n, *x.shape[1:])) * sigma * np.ptp(x)
    mean = sum(torch_input_gradient(torch, net, x + e[None], 3) for e in noise) / n
    close(ex.smoothgrad(model, x, 3, n=n, sigma=sigma, seed=5, batch_size=3),
          np.abs(mean[0]).max(axis=0))


def torch_gradcam(torch, net, x, k, index):
    """Grad-CAM at the output of net.features[index], by autograd."""
    f = torch.nn.functional
    rest = torch.nn.Sequential(*list(net.features)[index + 1:], net.flatten, net.classifier)
    a = net.features[:index + 1](torch.tensor(x))
    a.retain_grad()
    rest(a)[0, k].backward()
    alpha = a.grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((alpha * a).sum(dim=1, keepdim=True))
    return f.interpolate(cam, size=x.shape[2:], mode="bilinear",
                         align_corners=False)[0, 0].detach().numpy()


@pytest.mark.crosscheck
@pytest.mark.slow
def test_gradcam_equals_pytorch_at_every_block():
    torch = pytest.importorskip("torch")
    model, x = small_vgg(), image()
    net = torch_mirror(torch, model)
    blocks = ex.conv_blocks(model)
    assert len(blocks) == 5 and all(isinstance(dict(model.named_layers())[b], ReLU)
                                    for b in blocks)
    nonzero = 0
    for b, path in enumerate(blocks, start=1):
        for k in range(10):
            theirs = torch_gradcam(torch, net, x, k, int(path.split(".")[1]))
            ours = ex.gradcam(model, x, k, layer=b)
            assert ours.shape == (32, 32)
            close(ours, theirs)
            nonzero += bool(theirs.max() > 0)
    assert nonzero >= 25                           # most maps are not trivially zero
    close(ex.gradcam(model, x, 4, layer="features.5"), torch_gradcam(torch, net, x, 4, 5))


@pytest.mark.crosscheck
def test_fgsm_and_upsampling_equal_pytorch():
    torch = pytest.importorskip("torch")
    model, x = small_vgg(), np.concatenate([image(2), image(3)])
    net = torch_mirror(torch, model)
    t = torch.tensor(x, requires_grad=True)
    torch.nn.functional.cross_entropy(net(t), torch.tensor([2, 5])).backward()
    close(ex.fgsm(model, x, np.array([2, 5]), 0.03), (t + 0.03 * t.grad.sign()).detach())
    m = np.random.default_rng(0).random((3, 5))
    theirs = torch.nn.functional.interpolate(torch.tensor(m)[None, None], size=(7, 11),
                                             mode="bilinear", align_corners=False)
    close(ex.upsample_bilinear(m, 7, 11), theirs[0, 0].numpy())


# -- an adversarial example --------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained():
    """A small VGG-style network trained for a few seconds on the synthetic shapes."""
    from minivgg.data import Normalize, make_shapes
    from minivgg.optim import Adam
    from minivgg.train import train_step
    ds = make_shapes(n_train=1280, n_test=200, seed=0)
    normalize = Normalize.from_data(ds.train_images)
    model = vgg([8, "M", 16, "M", 32, "M"], 10, 32, head="cifar", seed=0)
    optimizer = Adam(model.parameters(), lr=0.003)
    x, y = normalize(ds.train_images), ds.train_labels
    for _ in range(6):        # ~28% test accuracy (4 epochs: 15-18%, too near chance)
        for i in range(0, len(x), 32):
            train_step(model, optimizer, x[i:i + 32], y[i:i + 32])
    return model.eval(), normalize(ds.test_images), ds.test_labels


def predicted(model, x):
    with mv.no_grad():
        return model.forward(x, training=False).argmax(axis=1)


@pytest.mark.slow
def test_one_fgsm_step_flips_the_class_and_random_signs_do_not(trained):
    model, x, y = trained
    right = predicted(model, x) == y
    assert right.mean() > 0.15                     # learned something (chance: ~0.1)
    x, y, eps = x[right], y[right], 0.05           # 0.05 standard deviations per value
    x_adv = ex.fgsm(model, x, y, eps)
    assert x_adv.dtype == np.float32
    assert np.isclose(np.abs(x_adv - x).max(), eps, rtol=1e-5)
    flipped = (predicted(model, x_adv) != y).mean()
    signs = np.sign(np.random.default_rng(0).standard_normal(x.shape)).astype(np.float32)
    by_chance = (predicted(model, x + eps * signs) != y).mean()
    assert flipped >= 0.75 and by_chance <= 0.1, (flipped, by_chance)
    clipped = ex.fgsm(model, x, y, 1.0, clip=(-0.5, 0.5))
    assert clipped.min() >= -0.5 and clipped.max() <= 0.5


# -- modes, statistics and the first layer --------------------------------------------------

def test_explanations_leave_modes_statistics_and_first_layer_alone():
    model, x = small_vgg(dropout=0.5, hidden=(16,)), image()
    reference = ex.saliency(model, x, 3)            # evaluation mode
    first = next(layer for _, layer in model.named_layers() if isinstance(layer, Conv2D))
    first.input_grad = False                        # as a training run builds it
    model.train()
    before = {k: v.copy() for k, v in model.named_buffers().items()}
    # in training mode too, every explanation runs in evaluation mode: dropout off, BN fixed
    assert np.array_equal(ex.saliency(model, x, 3), reference)
    ex.smoothgrad(model, x, 3, n=2)
    ex.gradcam(model, x, 3)
    ex.fgsm(model, x, 3, 0.1)
    assert all(layer.training for _, layer in model.named_layers()) and model.training
    assert all(np.array_equal(before[k], v) for k, v in model.named_buffers().items())
    assert first.input_grad is False
    model.eval()
    ex.gradcam(model, x, 3, layer=2)
    assert not any(layer.training for _, layer in model.named_layers())


def test_refusals_name_the_problem():
    model, x = small_vgg(), image()
    with mv.no_grad(), pytest.raises(RuntimeError, match="no_grad"):
        ex.saliency(model, x, 0)
    with pytest.raises(ValueError, match="blocks 1..5"):
        ex.gradcam(model, x, 0, layer=6)
    with pytest.raises(ValueError, match="no layer 'features.99'"):
        ex.gradcam(model, x, 0, layer="features.99")
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        ex.saliency(model, x, 10)
    with pytest.raises(ValueError, match="one image"):
        ex.gradcam(model, np.concatenate([x, x]), 0)
    with pytest.raises(ValueError, match="gradcam only"):
        ex.explain(model, x, 0, "saliency", layer=3)
    assert ex.resolve_layer(model, "3") == ex.resolve_layer(model, 3) == ex.conv_blocks(model)[2]


def test_conv_blocks_of_vgg16_are_the_relus_before_each_pool():
    model = vgg("D", 10, 32, head="cifar", width=1 / 64, seed=0)
    assert ex.conv_blocks(model) == ["features.3", "features.8", "features.15", "features.22",
                                     "features.29"]


# -- dense evaluation --------------------------------------------------------------------------

def test_class_score_map_of_a_larger_image():
    model, x = small_vgg(hidden=(16,)), image(size=64)
    scores = ex.class_score_map(model, x)
    assert scores.shape == (10, 2, 2)               # one score vector per 32-pixel step
    with mv.no_grad():
        averaged = to_dense_eval(model, average=True).forward(x, training=False)[0]
    assert np.allclose(scores.mean(axis=(1, 2)), averaged, rtol=0, atol=1e-12)
    assert model.settings.dense_eval is False       # the model itself is unchanged


# -- figures -----------------------------------------------------------------------------------

def is_png(path, min_bytes=10_000):
    import matplotlib.image
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > min_bytes, len(data)
    picture = matplotlib.image.imread(path)
    assert picture.ndim == 3 and min(picture.shape[:2]) > 150
    return picture.shape


@pytest.mark.slow
def test_figures_are_real_pngs(tmp_path):
    from minivgg.plots_explain import explain_file, plot_model, plot_score_map
    model, x = small_vgg(), image()
    pixels = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    classes = [f"class {i}" for i in range(10)]
    for method in ex.METHODS:
        result = explain_file(model, x, pixels, classes, method,
                              out_path=tmp_path / f"{method}.png")
        is_png(result["path"])
        assert result["class"] == result["top"][0][0] and len(result["top"]) == 5
        assert (result["layer"] == "features.27") == (method == "gradcam")
    result = explain_file(model, x, pixels, classes, "gradcam", layer=2, k=4,
                          out_path=tmp_path / "block2.png")
    assert (result["class"], result["layer"]) == (4, ex.conv_blocks(model)[1])
    plot_model(model, (3, 32, 32), tmp_path / "small.png")
    height = is_png(tmp_path / "small.png")[0]
    plot_model(VGGSettings("vgg16", 1000, 224, "imagenet"), None, tmp_path / "vgg16.png")
    assert is_png(tmp_path / "vgg16.png")[0] > height  # more boxes: a taller diagram
    big = (np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)
    plot_score_map(ex.class_score_map(small_vgg(hidden=(16,)), image(size=64)), big, classes,
                   tmp_path / "map.png")
    is_png(tmp_path / "map.png")
    assert not list(tmp_path.glob(".*.tmp"))       # no temporary file left behind


def test_predict_photo_gives_imagenet_top5():
    from minivgg.plots_explain import predict_photo
    model = vgg("A", 1000, 224, width=1 / 32, fc_width=16, seed=0).eval()
    photo = (np.random.default_rng(0).random((300, 260, 3)) * 255).astype(np.uint8)
    top = predict_photo(model, photo)
    assert len(top) == 5 and all(isinstance(name, str) for _, name, _ in top)
    assert [p for *_, p in top] == sorted((p for *_, p in top), reverse=True)
