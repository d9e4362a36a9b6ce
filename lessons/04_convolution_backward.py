"""Lesson 04 -- the convolution backward pass: dW, db and dx, and why col2im adds.

    python lessons/04_convolution_backward.py
"""

# %%
from _common import FAST, done, ink, np, out_dir, plt, save, say, section, title

import minivgg as mv
from minivgg.gradcheck import check_layer, compute_gradients, relative_error
from minivgg.kernels.reference import col2im, im2col
from minivgg.layers import Conv2D

FIGURES = ["overlap_counts.png", "gradient_check.png"]
OUT = out_dir("04_convolution_backward")
mv.set_cpu_kernels("numpy")   # the readable reference kernels

title("Lesson 04: backward through a convolution")
say("""
    Forward (lesson 03), with rows r = (n, y, x) and the weight flattened to Wm (F, C*k*k):

        Y = cols @ Wm.T + b            Y: (N*OH*OW, F), cols: (N*OH*OW, C*k*k)

    Given dY = dL/dY, the chain rule for a matrix product gives the three gradients:

        dWm   = dY.T @ cols            each weight meets every window it was multiplied with
        db    = dY.sum(axis=0)         the bias is added to every output pixel
        dcols = dY @ Wm                then dx = col2im(dcols): copies of a pixel add up
""")

rng = np.random.default_rng(0)
n, c, s, f = 2, 3, 6, 4
x = rng.standard_normal((n, c, s, s))                       # float64: exact comparisons
conv = Conv2D(c, f, kernel_size=3, padding=1, rng=rng, dtype=np.float64)
conv.bias.data[:] = rng.standard_normal(f)
y = conv.forward(x, training=True)
dout = rng.standard_normal(y.shape)                         # some upstream gradient
dx = conv.backward(dout)
print(f"   x {x.shape}, W {conv.weight.shape}, y {y.shape}; dx {dx.shape}, "
      f"dW {conv.weight.grad.shape}, db {conv.bias.grad.shape}")

# %% The three formulas, computed by hand with the reference kernels
section("The three formulas, computed by hand with the reference kernels")
cols = im2col(x, 3, 3, 1, 1)
dy = dout.transpose(0, 2, 3, 1).reshape(-1, f)              # NCHW -> rows (n, y, x), F
wm = conv.weight.data.reshape(f, -1)
dw_hand = (dy.T @ cols).reshape(conv.weight.shape)
db_hand = dy.sum(axis=0)
dx_hand = col2im(dy @ wm, x.shape, 3, 3, 1, 1)
for name, a, b in (("dW", conv.weight.grad, dw_hand), ("db", conv.bias.grad, db_hand),
                   ("dx", dx, dx_hand)):
    print(f"   {name}: layer vs formula, max difference {np.abs(a - b).max():.1e}")

# %% The same gradients from loops over the definition
section("The same gradients from loops over the definition")
xpad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
dw_loop = np.zeros_like(conv.weight.data)
dxpad = np.zeros_like(xpad)
for i in range(3):
    for j in range(3):
        window = xpad[:, :, i:i + s, j:j + s]                 # x at offset (i, j), all pixels
        dw_loop[:, :, i, j] = np.einsum("nfyx,ncyx->fc", dout, window)
        dxpad[:, :, i:i + s, j:j + s] += np.einsum("nfyx,fc->ncyx", dout,
                                                    conv.weight.data[:, :, i, j])
print(f"   dW[f, c, i, j] = sum_(n,y,x) dout[n, f, y, x] * xpad[n, c, y+i, x+j]: "
      f"max difference {np.abs(dw_loop - conv.weight.grad).max():.1e}")
print(f"   dx: scatter dout * W[:, :, i, j] back to every offset, then cut the padding: "
      f"max difference {np.abs(dxpad[:, :, 1:-1, 1:-1] - dx).max():.1e}")

# %% Why col2im accumulates
section("Why col2im accumulates")
ones = np.ones((1, 1, 4, 4))
counts = col2im(im2col(ones, 3, 3, 1, 1), ones.shape, 3, 3, 1, 1)
print("   col2im(im2col(ones)) on a 4 x 4 image, 3 x 3 kernel, pad 1: how many windows\n"
      "   contain each pixel:\n   " + str(counts[0, 0].astype(int)).replace("\n", "\n   "))
say("""
    A corner pixel sits in 4 windows, an inner pixel in 9: it was copied into that many
    rows of cols, each copy fed a different output, so its gradient is the SUM of the
    gradients of its copies. Overwriting instead of adding keeps only the last copy:
""")
dcols = (dy @ wm).reshape(n, s, s, c, 3, 3).transpose(0, 3, 4, 5, 1, 2)
wrong = np.zeros_like(xpad)
for i in range(3):
    for j in range(3):
        wrong[:, :, i:i + s, j:j + s] = dcols[:, :, i, j]     # "=" where col2im does "+="
wrong = wrong[:, :, 1:-1, 1:-1]
print(f"   relative error of an assigning col2im against the true dx: "
      f"{relative_error(wrong, dx):.2f} (order 1: wrong); "
      f"the accumulating one: {relative_error(dx_hand, dx):.1e}")
c_rand = rng.standard_normal(cols.shape)
lhs = float((im2col(x, 3, 3, 1, 1) * c_rand).sum())
rhs = float((x * col2im(c_rand, x.shape, 3, 3, 1, 1)).sum())
print(f"   col2im is the adjoint (transpose) of im2col: <im2col(x), C> = {lhs:.10f}, "
      f"<x, col2im(C)> = {rhs:.10f}")

fig, ax = plt.subplots(figsize=(3.6, 3.3))
im = ax.imshow(counts[0, 0], cmap="Blues", vmin=0, vmax=10)
for (r, cc), v in np.ndenumerate(counts[0, 0]):
    ax.text(cc, r, int(v), ha="center", va="center", fontsize=14, color=ink(im, v))
ax.set_title("windows containing each pixel\n(3x3 kernel, pad 1)")
ax.set_xticks([])
ax.set_yticks([])
save(fig, OUT, FIGURES[0])

# %% Checked against finite differences
section("Checked against finite differences")
say("""
    Lesson 08 explains gradient checking; here we only use it. check_layer perturbs each
    entry by +-h, measures the change of L = sum(y * g) and compares with backward:
""")
results = {}
shapes = [(1, 1)] if FAST else [(1, 1), (2, 1), (1, 0)]
for stride, pad in shapes:
    layer = Conv2D(c, f, 3, stride=stride, padding=pad, rng=rng, dtype=np.float64)
    errs = check_layer(layer, rng.standard_normal((n, c, 5, 5)), max_entries=30 if FAST else 60)
    for name, e in errs.items():
        results[f"s{stride} p{pad}\n{name}"] = e
    print(f"   stride {stride}, pad {pad}: relative errors "
          + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()) + "   (passes: all < 1e-7)")
grads = compute_gradients(Conv2D(c, f, 3, rng=rng, dtype=np.float64),
                          rng.standard_normal((1, c, 5, 5)), max_entries=5)
idx, analytic, numeric = grads["weight"]
print("   five weight entries, analytic vs numeric:")
for k, a, b in zip(idx, analytic, numeric):
    print(f"     W.flat[{k:3d}]: {a:+.10f}  {b:+.10f}")
fig, ax = plt.subplots(figsize=(7, 3))
ax.bar(list(results), list(results.values()), color="tab:green")
ax.axhline(1e-7, color="tab:red", ls="--", label="tolerance 1e-7")
ax.set_yscale("log")
ax.set_ylabel("relative error")
ax.set_title("Conv2D backward vs centred differences (float64)")
ax.tick_params(axis="x", labelsize=7)
ax.legend()
save(fig, OUT, FIGURES[1])
done()
