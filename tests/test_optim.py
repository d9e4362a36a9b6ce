"""Optimizers and schedules: hand-computed steps, PyTorch agreement, exact state round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest

from minivgg.layers.base import Parameter
from minivgg.optim import SGD, Adam
from minivgg.schedules import Constant, Cosine, MultiStep, Plateau, Step, Warmup, make_schedule


def param(values, grad, decay=True, dtype=np.float64):
    p = Parameter(np.array(values, dtype=dtype), decay=decay)
    p.grad[...] = grad
    return p


def test_sgd_without_momentum_is_w_minus_lr_g():
    p = param([1.0, 2.0], [0.5, -1.0])
    SGD([p], lr=0.1, momentum=0.0, weight_decay=0.0).step()
    np.testing.assert_allclose(p.data, [0.95, 2.1])


def test_sgd_momentum_two_steps_by_hand():
    p = param([1.0], [1.0])
    opt = SGD([p], lr=0.1, momentum=0.9, weight_decay=0.0)
    opt.step()                       # v = 1,            w = 1 - 0.1       = 0.9
    p.grad[...] = 2.0
    opt.step()                       # v = 0.9 + 2 = 2.9, w = 0.9 - 0.29    = 0.61
    np.testing.assert_allclose(p.data, [0.61])
    np.testing.assert_allclose(opt.buffers["momentum"]["0"], [2.9])


def test_nesterov_and_weight_decay_by_hand():
    p = param([2.0], [1.0])
    opt = SGD([p], lr=0.1, momentum=0.5, weight_decay=0.1, nesterov=True)
    opt.step()      # g = 1 + 0.1*2 = 1.2; v = 1.2; w = 2 - 0.1*(1.2 + 0.5*1.2) = 1.82
    np.testing.assert_allclose(p.data, [1.82])


def test_decay_flag_exempts_biases_unless_decay_all():
    w, b = param([1.0], [0.0]), param([1.0], [0.0], decay=False)
    SGD([w, b], lr=1.0, momentum=0.0, weight_decay=0.5).step()
    assert w.data[0] == 0.5 and b.data[0] == 1.0
    b2 = param([1.0], [0.0], decay=False)
    SGD([b2], lr=1.0, momentum=0.0, weight_decay=0.5, decay_all=True).step()
    assert b2.data[0] == 0.5


def test_updates_are_in_place_and_keep_dtype_and_grad():
    p = param(np.ones(5), np.full(5, 0.5), dtype=np.float32)
    data, grad = p.data, p.grad.copy()
    for opt in (SGD([p], lr=0.1, weight_decay=1e-3, nesterov=True), Adam([p], lr=0.1)):
        opt.step()
        assert p.data is data and p.data.dtype == np.float32
        np.testing.assert_array_equal(p.grad, grad)


def test_adam_first_step_moves_each_weight_by_lr():
    p = param([0.0, 0.0, 0.0], [3.0, -0.01, 1e3])
    Adam([p], lr=0.01).step()           # m_hat = g, s_hat = g^2: step = lr * g / |g|
    np.testing.assert_allclose(p.data, [-0.01, 0.01, -0.01], rtol=1e-5)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="SGD: momentum"):
        SGD([param([1.0], [0.0])], momentum=1.5)
    with pytest.raises(ValueError, match="no parameters"):
        SGD([], lr=0.1)
    with pytest.raises(ValueError, match="Nesterov"):
        SGD([param([1.0], [0.0])], momentum=0.0, nesterov=True)


@pytest.mark.parametrize("make", [
    lambda ps: SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-2, nesterov=True),
    lambda ps: Adam(ps, lr=0.01, weight_decay=1e-2),
    lambda ps: Adam(ps, lr=0.01, weight_decay=1e-2, decoupled=True)])
def test_state_dict_round_trip_continues_exactly(make):
    rng = np.random.default_rng(0)
    grads = rng.standard_normal((6, 4, 3)).astype(np.float32)
    a = [param(np.ones((4, 3)), 0, dtype=np.float32), param(np.ones(3), 0, False, np.float32)]
    opt_a = make(a)
    for g in grads[:3]:
        a[0].grad[...], a[1].grad[...] = g, g[0]
        opt_a.step()
    b = [Parameter(x.data.copy(), x.decay) for x in a]
    opt_b = make(b)
    opt_b.load_state_dict({k: v.copy() for k, v in opt_a.state_dict().items()})
    for g in grads[3:]:
        for ps, opt in ((a, opt_a), (b, opt_b)):
            ps[0].grad[...], ps[1].grad[...] = g, g[0]
            opt.step()
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.data, y.data)


def test_load_state_dict_rejects_foreign_state():
    opt = SGD([param(np.ones(3), np.ones(3))], lr=0.1)
    opt.step()
    state = opt.state_dict()
    with pytest.raises(ValueError, match="unexpected key 'momentum.7'"):
        opt.load_state_dict({**state, "momentum.7": np.zeros(3)})
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict({**state, "momentum.0": np.zeros(4)})


@pytest.mark.crosscheck
@pytest.mark.parametrize("kind", ["sgd", "nesterov", "adam", "adamw"])
def test_optimizers_match_torch(kind):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    w0 = rng.standard_normal((5, 4))
    grads = rng.standard_normal((8, 5, 4))
    p = param(w0.copy(), 0)
    t = torch.tensor(w0.copy(), requires_grad=True)
    if kind in ("sgd", "nesterov"):
        ours = SGD([p], lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=kind == "nesterov")
        theirs = torch.optim.SGD([t], lr=0.1, momentum=0.9, weight_decay=5e-4,
                                 nesterov=kind == "nesterov")
    elif kind == "adam":
        ours, theirs = Adam([p], lr=0.01, weight_decay=1e-2), torch.optim.Adam(
            [t], lr=0.01, weight_decay=1e-2)
    else:
        ours = Adam([p], lr=0.01, weight_decay=1e-2, decoupled=True)
        theirs = torch.optim.AdamW([t], lr=0.01, weight_decay=1e-2)
    for i, g in enumerate(grads):
        if i == 4:                       # a learning-rate change mid-way, as a schedule makes
            ours.lr = 0.03
            for group in theirs.param_groups:
                group["lr"] = 0.03
        p.grad[...] = g
        t.grad = torch.tensor(g)
        ours.step()
        theirs.step()
    np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, atol=1e-12)


# -- schedules --------------------------------------------------------------------------
def test_step_multistep_cosine_values():
    assert [Step(1.0, 3, 0.1).lr(t) for t in (0, 2.9, 3, 6.5)] == pytest.approx(
        [1, 1, 0.1, 0.01])
    assert [MultiStep(1.0, [2, 5], 0.5).lr(t) for t in (1.99, 2, 4, 5)] == pytest.approx(
        [1, 0.5, 0.5, 0.25])
    c = Cosine(0.2, epochs=10)
    assert c.lr(0) == pytest.approx(0.2) and c.lr(5) == pytest.approx(0.1)
    assert c.lr(10) == pytest.approx(0.0) and c.lr(12) == pytest.approx(0.0)
    assert Cosine(1.0, 4, min_factor=0.1).lr(4) == pytest.approx(0.1)
    assert Constant(0.3).lr(100) == 0.3


def test_warmup_ramps_linearly_then_hands_over():
    w = Warmup(Cosine(1.0, 10), epochs=2, steps_per_epoch=4)
    assert w.lr(0) == pytest.approx(0.125 * Cosine(1.0, 10).lr(0))   # first step: lr / 8
    assert w.lr(1) == pytest.approx((1.25 / 2) * Cosine(1.0, 10).lr(1))
    assert w.lr(3) == pytest.approx(Cosine(1.0, 10).lr(3))


def test_plateau_divides_by_ten_after_patience_and_round_trips():
    s = Plateau(0.1, factor=0.1, patience=1)
    for acc in (50, 60, 60.0, 59):      # best 60 at epoch 2, then two epochs without gain
        s.end_epoch(acc)
    assert s.lr(0) == pytest.approx(0.01) and s.reductions == 1
    clone = Plateau(0.1, factor=0.1, patience=1)
    clone.load_state_dict(s.state_dict())
    for sched in (s, clone):
        sched.end_epoch(59)
        sched.end_epoch(58)
    assert clone.lr(0) == s.lr(0) == pytest.approx(0.001)


def test_make_schedule_names_and_errors():
    assert isinstance(make_schedule("multistep", 0.1, 20), MultiStep)
    assert make_schedule("multistep", 0.1, 20).milestones == [10, 15]
    assert isinstance(make_schedule("cosine", 0.1, 20, 10, warmup=1), Warmup)
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        make_schedule("linear", 0.1, 20)


@pytest.mark.crosscheck
def test_schedules_match_torch():
    torch = pytest.importorskip("torch")
    t = torch.zeros(1, requires_grad=True)
    cases = [(Step(0.1, 3, 0.5), lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.5)),
             (MultiStep(0.1, [2, 5], 0.1),
              lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [2, 5], 0.1)),
             (Cosine(0.1, 8), lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 8))]
    for ours, make in cases:
        opt = torch.optim.SGD([t], lr=0.1)
        theirs = make(opt)
        for epoch in range(9):          # torch's cosine rises again after T_max; ours stays
            assert ours.lr(epoch) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12), \
                (ours, epoch)
            opt.step()
            theirs.step()


def test_cosine_is_smooth_within_an_epoch():
    c = Cosine(1.0, 2)
    assert c.lr(0.5) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


class Elsewhere(np.ndarray):
    """A NumPy array that stands for one on another device (for Optimizer.to on the CPU)."""


@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01,
                                                 nesterov=True),
                                  lambda ps: Adam(ps, lr=0.01, weight_decay=0.01)],
                         ids=["sgd", "adam"])
def test_optimizer_to_moves_its_state_after_steps_and_training_continues(make, monkeypatch):
    """A model moved after it has stepped: ``place`` moves the optimizer's state with it,
    and the next steps equal those of a twin that never moved."""
    import minivgg.optim as optim_module
    from minivgg.device import place
    device_of = optim_module.device_of
    monkeypatch.setattr(optim_module, "device_of",
                        lambda x: "gpu" if isinstance(x, Elsewhere) else device_of(x))
    monkeypatch.setattr(optim_module, "to_device", lambda x, device: (
        np.asarray(x).view(Elsewhere) if device == "gpu" else np.asarray(x).view(np.ndarray)))

    class Model:                                     # place() calls model.to(device)
        def __init__(self, params):
            self.params = params

        def to(self, device):
            for p in self.params:
                p.data = optim_module.to_device(p.data, device)

    grads = np.random.default_rng(1).standard_normal((5, 3))
    moved, still = [param(np.ones(3), 0)], [param(np.ones(3), 0)]
    opt_moved, opt_still = make(moved), make(still)
    for step, g in enumerate(grads):
        if step == 2:
            place(Model(moved), opt_moved, "cpu")     # checks the device name path too
            Model(moved).to("gpu")
            opt_moved.to("gpu")
            assert all(isinstance(b, Elsewhere) for bufs in opt_moved.buffers.values()
                       for b in bufs.values()) and not opt_moved.scratch
        for ps, opt in ((moved, opt_moved), (still, opt_still)):
            ps[0].grad = np.asarray(g).view(type(ps[0].data))
            opt.step()
    assert isinstance(moved[0].data, Elsewhere)
    np.testing.assert_array_equal(moved[0].data.view(np.ndarray), still[0].data)
    assert all(isinstance(b, Elsewhere) for bufs in opt_moved.buffers.values()
               for b in bufs.values())
