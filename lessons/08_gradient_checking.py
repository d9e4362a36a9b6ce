"""Lesson 08 -- gradient checking: how we know every backward pass is right.

    python lessons/08_gradient_checking.py
"""

# %%
from _common import done, np, out_dir, plt, save, say, section, title

import minivgg as mv
from minivgg.gradcheck import check_layer, check_model, compute_gradients, relative_error
from minivgg.layers import Conv2D, Dense, Flatten, ReLU
from minivgg.models import Sequential

FIGURES = ["error_vs_step.png", "float32_vs_float64.png"]
OUT = out_dir("08_gradient_checking")
mv.set_cpu_kernels("numpy")   # the readable reference kernels

title("Lesson 08: checking gradients with finite differences")
# %% Centred differences
section("Centred differences")
say("""
    A derivative can be measured without calculus: nudge the input and watch the output.

        forward:  (f(x + h) - f(x)) / h             error ~ h    (Taylor: f''/2 * h)
        centred:  (f(x + h) - f(x - h)) / (2h)      error ~ h^2  (the f'' terms cancel)

    but h cannot be tiny: f is computed with rounding error ~ eps * |f|, and dividing by
    h amplifies it to ~ eps / h. The best h balances the two. Measured on
    f(x) = sin(x) exp(x) at x = 1, whose derivative is (sin x + cos x) exp(x):
""")
hs = np.logspace(-12, -1, 45)
x0 = 1.0
exact = (np.sin(x0) + np.cos(x0)) * np.exp(x0)
curves = {}
for dtype in (np.float64, np.float32):
    f = lambda x, d=dtype: np.sin(d(x)) * np.exp(d(x))
    fwd = [abs(float((f(x0 + h) - f(x0)) / dtype(h)) - exact) / exact for h in hs]
    cen = [abs(float((f(x0 + h) - f(x0 - h)) / dtype(2 * h)) - exact) / exact for h in hs]
    curves[np.dtype(dtype).name] = (fwd, cen)
    best = int(np.argmin(cen))
    print(f"   {np.dtype(dtype).name}: best centred error {cen[best]:.1e} at h = {hs[best]:.0e}; "
          f"best forward error {min(fwd):.1e}; machine eps {np.finfo(dtype).eps:.1e}")
fig, ax = plt.subplots(figsize=(6, 3.6))
for (name, (fwd, cen)), ls in zip(curves.items(), ("-", ":")):
    ax.loglog(hs, fwd, ls, color="tab:orange", label=f"forward, {name}")
    ax.loglog(hs, cen, ls, color="tab:blue", label=f"centred, {name}")
ax.set_xlabel("step h")
ax.set_ylabel("relative error of the derivative")
ax.set_title("too large h: truncation; too small h: rounding")
ax.legend(fontsize=7)
save(fig, OUT, FIGURES[0])

# %% Relative error
section("Relative error")
say("""
    minivgg compares whole tensors a (backward) and b (numeric) with

        err = max |a - b| / max(1e-8, max(|a| + |b|))

    The denominator makes the verdict independent of the gradients' scale -- as long as
    max(|a| + |b|) is above the floor of 1e-8. The floor is there for gradients that are
    zero in both (a convolution's bias in front of batch norm): without it, 0 / 0. Below
    it the error is an absolute one, divided by 1e-8, and shrinks with the scale:
""")
a = np.array([1.0, 2.0, 3.0])
for scale in (1e6, 1.0, 1e-6, 1e-8, 1e-10, 1e-12):
    g = a * scale
    denominator = np.max(np.abs(g) + np.abs(g * (1 + 1e-9)))
    print(f"   gradients of size {scale:5.0e}, numeric off by 1e-9 relative: max(|a| + |b|) = "
          f"{denominator:.0e}{' < 1e-8, the floor' if denominator < 1e-8 else ''}; "
          f"relative error {relative_error(g, g * (1 + 1e-9)):.1e}")
wrong = relative_error(a * 1e-16, 2 * a * 1e-16)
print(f"   gradients of size 1e-16 whose numeric value is TWICE the analytic: relative error "
      f"{wrong:.0e} -> {'passes' if wrong < 1e-7 else 'fails'} the 1e-7 tolerance")
say("""
    So a check on tiny gradients can pass however wrong they are relative to their size:
    keep the checked quantity of order 1 (check_layer uses a random upstream gradient of
    size 1) rather than trusting the error below the floor.
""")

# %% Kinks
section("Kinks")
relu = ReLU()
xk = np.array([[-1.0, 3e-7, 0.5, 2.0]])
try:
    check_layer(relu, xk, eps=1e-6)
except AssertionError as exc:
    print(f"   ReLU with an entry at 3e-7, h = 1e-6: FAILS -> {exc}")
idx, analytic, numeric = compute_gradients(ReLU(), xk, eps=1e-6)["input"]
print(f"   at that entry numeric / analytic = {numeric[1] / analytic[1]:.2f}: x + h and x - h "
      "fall on both\n   sides of the kink at 0, so the centred difference measures "
      "(3e-7 + 1e-6 - 0) / 2e-6 = 0.65,\n   neither slope 0 nor 1.")
err = check_layer(relu, np.array([[-1.0, 0.3, 0.5, 2.0]]))["input"]
print(f"   every entry at least 0.3 from the kink: passes, relative error {err:.1e}")

# %% float32 versus float64
section("float32 versus float64")
try:
    check_layer(Dense(4, 3), np.ones((2, 4), dtype=np.float32))
except TypeError as exc:
    print(f"   check_layer refuses float32: {exc}")
say("""
    Why: do the same check by hand in float32. L = sum(y * g) is rounded to ~1e-7 of its
    size, and dividing by 2h amplifies that rounding to 1e-7 / h.
""")
rng = np.random.default_rng(0)
errors = {}
for dtype, h in ((np.float32, 1e-2), (np.float32, 1e-3), (np.float32, 1e-4),
                 (np.float64, 1e-6)):
    layer = Dense(20, 10, rng=np.random.default_rng(1), std=0.5, dtype=dtype)
    x = rng.standard_normal((8, 20)).astype(dtype)
    g = rng.standard_normal((8, 10)).astype(dtype)
    layer.forward(x, training=True)
    analytic = layer.backward(g)
    numeric = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        old = x[idx]
        x[idx] = old + dtype(h)
        plus = (layer.forward(x, training=False) * g).sum()
        x[idx] = old - dtype(h)
        minus = (layer.forward(x, training=False) * g).sum()
        x[idx] = old
        numeric[idx] = (plus - minus) / dtype(2 * h)
    e = relative_error(analytic, numeric)
    label = f"{np.dtype(dtype).name}\nh={h:g}"
    errors[label] = e
    print(f"   {np.dtype(dtype).name}, h = {h:g}: relative error {e:.1e} -> "
          f"{'passes' if e < 1e-7 else 'FAILS'} the 1e-7 tolerance")
fig, ax = plt.subplots(figsize=(5.5, 3.2))
ax.bar(list(errors), list(errors.values()),
       color=["tab:red" if e > 1e-7 else "tab:green" for e in errors.values()])
ax.axhline(1e-7, color="k", ls="--", label="tolerance 1e-7")
ax.set_yscale("log")
ax.set_ylabel("relative error")
ax.set_title("the same correct Dense backward, checked in two precisions")
ax.legend()
save(fig, OUT, FIGURES[1])
print("   the layer is correct in all four rows: only float64 can show it.")

# %% A planted bug, caught
section("A planted bug, caught")


class FlippedConv(Conv2D):
    """A classic mistake: flip the kernel for dx ("a true convolution") when im2col needs none."""

    def backward(self, dout):
        weight = self.weight.data
        self.weight.data = weight[:, :, ::-1, ::-1].copy()
        try:
            return super().backward(dout)
        finally:
            self.weight.data = weight


xb = rng.standard_normal((2, 3, 5, 5))
res = compute_gradients(FlippedConv(3, 4, rng=np.random.default_rng(2), dtype=np.float64), xb)
print("   FlippedConv, relative error per tensor: "
      + ", ".join(f"{k} {relative_error(a, b):.1e}" for k, (_, a, b) in res.items()))
try:
    check_layer(FlippedConv(3, 4, rng=np.random.default_rng(2), dtype=np.float64), xb)
except AssertionError as exc:
    print(f"   FlippedConv: caught -> {exc}")
errs = check_layer(Conv2D(3, 4, rng=np.random.default_rng(2), dtype=np.float64), xb)
print(f"   the real Conv2D on the same input: input {errs['input']:.1e}, "
      f"weight {errs['weight']:.1e}, bias {errs['bias']:.1e}: the flip broke only dx")
model = Sequential(FlippedConv(3, 4, rng=np.random.default_rng(2), dtype=np.float64), ReLU(),
                   Flatten(), Dense(100, 10, rng=np.random.default_rng(3), dtype=np.float64))
try:
    check_model(model, xb, labels=np.array([1, 7]))
except AssertionError as exc:
    print(f"   inside a whole model, with the real loss, check_model also catches it -> {exc}")


class LazyReLU(ReLU):
    """Another bug: return the mask itself and forget to multiply by dout."""

    def backward(self, dout):
        return self._cached(self.cache).astype(dout.dtype)


xr = rng.standard_normal((3, 4)) + 0.0
xr[np.abs(xr) < 0.1] = 0.5
res = compute_gradients(LazyReLU(), xr)        # random upstream gradient g, as check_layer
ones_check = LazyReLU()
ones_check.forward(xr, training=True)
with_ones = relative_error(ones_check.backward(np.ones_like(xr)), (xr > 0).astype(float))
print(f"   LazyReLU checked with an upstream gradient of ones: relative error {with_ones:.0e} "
      "(the bug hides)")
print(f"   with a random upstream gradient, as check_layer uses: relative error "
      f"{relative_error(*res['input'][1:]):.2f} (caught)")
done()
