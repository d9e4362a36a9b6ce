"""CUDA kernels through CuPy: the functions of reference.py on the GPU, float32 and float64.

The layout story is the one of cpu.py (see layout.py): kernels read and write C-contiguous
NHWC buffers and return NCHW views, so the NHWC output of a convolution's GEMM (cuBLAS,
through ``cupy.matmul``) flows on without transposes. One thread per *output* element:

- im2col: one thread per entry of ``cols``; consecutive threads write consecutive entries.
- col2im and max-pool backward are gathers, one thread per input pixel and channel, that sum
  the entries that read it in the reference's (i, j) order: no atomics, no zero-fill, and
  (the sums being plain additions) the same bits as the reference.
- max-pool forward keeps a compact argmax (uint8, i * k + j); the first maximum wins.

CuPy is imported only when a kernel is first called, so this module imports anywhere, and
``CUDA_SOURCE`` can be checked (compiled with nvcc) on a machine without a GPU.
"""

from __future__ import annotations

from minivgg.kernels.layout import as_nhwc, in_order, memory_order, nchw
from minivgg.kernels.reference import conv_output_size

__all__ = ["im2col", "col2im", "maxpool_forward", "maxpool_backward",
           "relu_forward", "relu_backward", "matmul", "CUDA_SOURCE", "KERNEL_NAMES"]

CUDA_SOURCE = r"""
// Grid-stride loops over the output: `for (idx = first; idx < total; idx += stride)`.
#define MV_LOOP(idx, total) \
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < (total); \
         idx += (long long)blockDim.x * gridDim.x)

template <typename T>
__global__ void im2col_nhwc(const T* x, T* cols, long long total, int H, int W, int C,
                            int OH, int OW, int KH, int KW, int S, int P) {
    const long long ckk = (long long)C * KH * KW;
    MV_LOOP(idx, total) {
        long long row = idx / ckk;
        int col = (int)(idx % ckk);                 // (c, i, j) as weight.reshape(F, -1)
        int ch = col / (KH * KW), r = col % (KH * KW), i = r / KW, j = r % KW;
        int ow = (int)(row % OW);
        long long t = row / OW;
        int oh = (int)(t % OH);
        long long n = t / OH;
        int y = oh * S + i - P, z = ow * S + j - P;
        cols[idx] = (y >= 0 && y < H && z >= 0 && z < W)
                    ? x[((n * H + y) * W + z) * C + ch] : T(0);
    }
}

template <typename T>
__global__ void col2im_nhwc(const T* cols, T* dx, long long total, int H, int W, int C,
                            int OH, int OW, int KH, int KW, int S, int P) {
    const long long ckk = (long long)C * KH * KW;
    MV_LOOP(idx, total) {
        int ch = (int)(idx % C);
        long long t = idx / C;
        int z = (int)(t % W);
        t /= W;
        int y = (int)(t % H);
        long long n = t / H;
        T acc = T(0);
        for (int i = 0; i < KH; ++i) {              // the reference's (i, j) order
            int ty = y + P - i;
            if (ty < 0 || ty % S != 0 || ty / S >= OH) continue;
            for (int j = 0; j < KW; ++j) {
                int tz = z + P - j;
                if (tz < 0 || tz % S != 0 || tz / S >= OW) continue;
                long long row = (n * OH + ty / S) * OW + tz / S;
                acc += cols[row * ckk + (long long)ch * KH * KW + i * KW + j];
            }
        }
        dx[idx] = acc;
    }
}

template <typename T>
__global__ void maxpool_forward_nhwc(const T* x, T* out, unsigned char* argmax,
                                     long long total, int H, int W, int C,
                                     int OH, int OW, int K, int S) {
    MV_LOOP(idx, total) {
        int ch = (int)(idx % C);
        long long t = idx / C;
        int ow = (int)(t % OW);
        t /= OW;
        int oh = (int)(t % OH);
        long long n = t / OH;
        const T* base = x + ((n * H + (long long)oh * S) * W + (long long)ow * S) * C + ch;
        T best = base[0];
        int arg = 0;
        for (int i = 0; i < K; ++i) {
            for (int j = 0; j < K; ++j) {
                T v = base[((long long)i * W + j) * C];
                // strictly greater: the first maximum wins; a NaN wins as in np.argmax
                if (v > best || (v != v && best == best)) { best = v; arg = i * K + j; }
            }
        }
        out[idx] = best;
        argmax[idx] = (unsigned char)arg;
    }
}

template <typename T>
__global__ void maxpool_backward_nhwc(const T* dout, const unsigned char* argmax, T* dx,
                                      long long total, int H, int W, int C,
                                      int OH, int OW, int K, int S) {
    MV_LOOP(idx, total) {
        int ch = (int)(idx % C);
        long long t = idx / C;
        int z = (int)(t % W);
        t /= W;
        int y = (int)(t % H);
        long long n = t / H;
        T acc = T(0);
        for (int i = 0; i < K; ++i) {
            int ty = y - i;
            if (ty < 0 || ty % S != 0 || ty / S >= OH) continue;
            for (int j = 0; j < K; ++j) {
                int tz = z - j;
                if (tz < 0 || tz % S != 0 || tz / S >= OW) continue;
                long long o = ((n * OH + ty / S) * OW + tz / S) * C + ch;
                if (argmax[o] == i * K + j) acc += dout[o];
            }
        }
        dx[idx] = acc;
    }
}

template <typename T>
__global__ void relu_forward_flat(const T* x, T* y, bool* mask, long long total) {
    MV_LOOP(idx, total) {
        T v = x[idx];
        bool keep = v > T(0);
        mask[idx] = keep;
        y[idx] = v <= T(0) ? T(0) : v;   // NaN is not <= 0: it passes, as in the reference
    }
}

template <typename T>
__global__ void relu_backward_flat(const T* dout, const bool* mask, T* dx, long long total) {
    MV_LOOP(idx, total) {
        dx[idx] = mask[idx] ? dout[idx] : T(0);
    }
}
"""

KERNEL_NAMES = ("im2col_nhwc", "col2im_nhwc", "maxpool_forward_nhwc", "maxpool_backward_nhwc",
                "relu_forward_flat", "relu_backward_flat")
_CTYPES = {"float32": "float", "float64": "double"}
_THREADS = 256
_module = None


def _kernel(name, dtype):
    """The compiled kernel ``name<float|double>`` (compiled once per process, then cached)."""
    global _module
    import cupy
    if dtype.name not in _CTYPES:
        raise TypeError(f"minivgg.kernels.gpu.{name}: expected float32 or float64, got {dtype}")
    if _module is None:
        expressions = [f"{k}<{t}>" for k in KERNEL_NAMES for t in _CTYPES.values()]
        _module = cupy.RawModule(code=CUDA_SOURCE, options=("-std=c++14",),
                                 name_expressions=expressions)
    return _module.get_function(f"{name}<{_CTYPES[dtype.name]}>")


def _run(name, dtype, arrays, total, ints):
    import numpy as np
    if total == 0:
        return
    blocks = int(min((total + _THREADS - 1) // _THREADS, 1 << 20))   # grid-stride beyond
    args = (*arrays, np.int64(total), *(np.int32(v) for v in ints))
    _kernel(name, dtype)((blocks,), (_THREADS,), args)


# -- public functions: the reference's signatures -----------------------------------------------

def im2col(x, kh, kw, stride=1, pad=0, out=None):
    """Receptive fields of ``x`` (N, C, H, W) as rows (N*OH*OW, C*kh*kw); see reference.py."""
    import cupy
    n, c, h, w = x.shape
    oh, ow = conv_output_size(h, kh, stride, pad), conv_output_size(w, kw, stride, pad)
    shape = (n * oh * ow, c * kh * kw)
    if out is None:
        out = cupy.empty(shape, dtype=x.dtype)
    elif out.shape != shape or out.dtype != x.dtype or not out.flags.c_contiguous:
        raise ValueError(f"im2col: out must be a C-contiguous {x.dtype} array of shape {shape}, "
                         f"got {out.dtype} {out.shape}")
    _run("im2col_nhwc", x.dtype, (as_nhwc(x), out), out.size,
         (h, w, c, oh, ow, kh, kw, stride, pad))
    return out


def col2im(cols, x_shape, kh, kw, stride=1, pad=0):
    """Fold rows back into an image (N, C, H, W), summing overlaps; an NCHW view of NHWC."""
    import cupy
    n, c, h, w = x_shape
    oh, ow = conv_output_size(h, kh, stride, pad), conv_output_size(w, kw, stride, pad)
    dx = cupy.empty((n, h, w, c), dtype=cols.dtype)
    _run("col2im_nhwc", cols.dtype, (cupy.ascontiguousarray(cols), dx), dx.size,
         (h, w, c, oh, ow, kh, kw, stride, pad))
    return nchw(dx)


def maxpool_forward(x, k=2, stride=2):
    """Max-pooling; returns ``(out, argmax)`` as NCHW views of NHWC buffers (argmax uint8)."""
    import cupy
    if k * k > 256:
        raise ValueError(f"maxpool_forward (gpu): windows up to 16x16 are supported, got {k}x{k}")
    n, c, h, w = x.shape
    oh, ow = conv_output_size(h, k, stride, 0), conv_output_size(w, k, stride, 0)
    out = cupy.empty((n, oh, ow, c), dtype=x.dtype)
    argmax = cupy.empty((n, oh, ow, c), dtype=cupy.uint8)
    _run("maxpool_forward_nhwc", x.dtype, (as_nhwc(x), out, argmax), out.size,
         (h, w, c, oh, ow, k, stride))
    return nchw(out), nchw(argmax)


def maxpool_backward(dout, argmax, x_shape, k=2, stride=2):
    """Route each window's gradient to its maximum (a gather over windows); NCHW view."""
    import cupy
    n, c, h, w = x_shape
    _, _, oh, ow = dout.shape
    dx = cupy.empty((n, h, w, c), dtype=dout.dtype)
    _run("maxpool_backward_nhwc", dout.dtype,
         (as_nhwc(dout), as_nhwc(argmax.astype(cupy.uint8, copy=False)), dx), dx.size,
         (h, w, c, oh, ow, k, stride))
    return nchw(dx)


def relu_forward(x):
    """``(max(x, 0), x > 0)`` in one pass over memory; outputs keep the layout of ``x``."""
    import cupy
    flat, restore, _ = memory_order(x)
    y = cupy.empty_like(flat)
    mask = cupy.empty(flat.shape, dtype=cupy.bool_)
    _run("relu_forward_flat", x.dtype, (flat, y, mask), flat.size, ())
    return restore(y), restore(mask)


def relu_backward(dout, mask):
    """``dout * [x > 0]`` in one pass over memory; keeps the layout of ``dout``."""
    import cupy
    flat, restore, perm = memory_order(dout)
    dx = cupy.empty_like(flat)
    _run("relu_backward_flat", dout.dtype, (flat, in_order(mask, perm), dx), flat.size, ())
    return restore(dx)


def matmul(a, b, out=None):
    """``a @ b`` by cuBLAS (float32 in TF32 only where set_tf32(True) allowed it)."""
    import cupy
    return cupy.matmul(a, b, out=out)
