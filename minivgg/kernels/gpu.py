"""CUDA kernels through CuPy: the loops behind minivgg.kernels on the GPU, float32 and float64.

These are the *loops* only, with the signatures of cpu.py's: api.py checks every argument,
allocates the outputs and makes the NCHW views; a function here launches one kernel on
arrays it trusts. As in cpu.py (see layout.py), kernels read and write C-contiguous NHWC
buffers, so the NHWC output of a convolution's GEMM (cuBLAS, through ``cupy.matmul``) flows
on without transposes. One thread per *output* element, in grid-stride loops:

- im2col: one thread per entry of ``cols``; consecutive threads write consecutive entries.
- col2im and max-pool backward are gathers, one thread per input pixel and channel, that sum
  the entries that read it in the reference's (i, j) order: no atomics, no zero-fill, and
  (the sums being plain additions) the same bits as the reference -- up to subnormals, below.
- max-pool forward keeps a compact argmax (uint8, i * k + j); the first maximum wins.

**Subnormal float32 numbers are flushed to zero.** CuPy compiles every module with
``-ftz=true`` after the caller's options (NVRTC keeps the last one), so in float32 the
GPU's comparisons and additions read a subnormal (|x| < 1.2e-38) as a zero of its sign and
write a subnormal result as zero; moves and selections keep the bits. ReLU(1e-40) is
therefore 0 with mask False, where the reference gives 1e-40 and True. The claim is: the
same bits as the reference for float64, and for float32 the same bits as the reference
computed with flush-to-zero arithmetic (tests/ftz.py states it per kernel and checks it,
on the CPU with the x86 FTZ/DAZ modes). Training never meets the difference in practice:
a value that small is 38 orders of magnitude below the activations.

CuPy is imported only when a kernel is first called, so this module imports anywhere, and
``CUDA_SOURCE`` can be checked (compiled with nvcc) on a machine without a GPU. The module
is compiled once per process (all kernels, both dtypes) and each kernel looked up once;
the elementwise kernels of gpu_channels.py are likewise built once.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np

from minivgg.backend import get_array_module, get_tf32
from minivgg.kernels.layout import as_nhwc

__all__ = ["im2col_nhwc", "im2col_planes", "col2im_nhwc", "maxpool_forward_nhwc",
           "maxpool_backward_nhwc", "relu_forward_flat", "relu_backward_flat", "matmul",
           "channel_sums", "CUDA_SOURCE", "KERNEL_NAMES", "MAX_POOL_WINDOW"]

CUDA_SOURCE = r"""
// Grid-stride loops over the output: `for (idx = first; idx < total; idx += stride)`.
#define MV_LOOP(idx, total) \
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < (total); \
         idx += (long long)blockDim.x * gridDim.x)

// The position (n, y, z, ch) of flat index idx in a C-contiguous (N, H, W, C) array.
__device__ inline void unravel_nhwc(long long idx, int H, int W, int C,
                                    long long* n, int* y, int* z, int* ch) {
    *ch = (int)(idx % C);
    long long t = idx / C;
    *z = (int)(t % W);
    t /= W;
    *y = (int)(t % H);
    *n = t / H;
}

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
        long long n;
        int y, z, ch;
        unravel_nhwc(idx, H, W, C, &n, &y, &z, &ch);
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
        long long n;
        int oh, ow, ch;
        unravel_nhwc(idx, OH, OW, C, &n, &oh, &ow, &ch);
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
        long long n;
        int y, z, ch;
        unravel_nhwc(idx, H, W, C, &n, &y, &z, &ch);
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
MAX_POOL_WINDOW = 16       # argmax is one byte (unsigned char): i * k + j < 256
_CTYPES = {"float32": "float", "float64": "double"}
_THREADS = 256
_compiled: dict = {}       # "module" -> the RawModule; (name, dtype) -> its RawKernel


def _kernel(name: str, dtype):
    """The kernel ``name<float|double>``: the module compiled once, each kernel looked up once."""
    key = (name, np.dtype(dtype).name)
    if key not in _compiled:
        if "module" not in _compiled:
            import cupy
            expressions = [f"{k}<{t}>" for k in KERNEL_NAMES for t in _CTYPES.values()]
            _compiled["module"] = cupy.RawModule(code=CUDA_SOURCE, options=("-std=c++14",),
                                                 name_expressions=expressions)
        _compiled[key] = _compiled["module"].get_function(f"{name}<{_CTYPES[key[1]]}>")
    return _compiled[key]


def _launch(name, dtype, arrays, total, ints):
    """Run kernel ``name`` over ``total`` outputs; ``ints`` are its int parameters in order."""
    if total == 0:
        return
    blocks = int(min((total + _THREADS - 1) // _THREADS, 1 << 20))   # grid-stride beyond
    args = (*arrays, np.int64(total), *(np.int32(v) for v in ints))
    _kernel(name, dtype)((blocks,), (_THREADS,), args)


# -- the loops: arguments checked and outputs allocated by api.py ---------------------------

def im2col_nhwc(x, kh, kw, stride, pad, oh, ow, cols):
    """cols (N*OH*OW, C*kh*kw) = receptive fields of x (N, H, W, C)."""
    _, h, w, c = x.shape
    _launch("im2col_nhwc", x.dtype, (x, cols), cols.size, (h, w, c, oh, ow, kh, kw, stride, pad))


def im2col_planes(x, kh, kw, stride, pad, oh, ow, planes):
    """planes (C*kh*kw, N*OH*OW) = im2col's rows of x (N, C, H, W), transposed: the rows
    kernel, then one transposing copy (Conv2D asks for planes on the CPU only)."""
    cols = get_array_module(x).empty(planes.shape[::-1], dtype=x.dtype)
    im2col_nhwc(as_nhwc(x), kh, kw, stride, pad, oh, ow, cols)
    planes[...] = cols.T


def col2im_nhwc(cols, kh, kw, stride, pad, oh, ow, dx):
    """dx (N, H, W, C) = the sum of the entries of cols that read each pixel."""
    _, h, w, c = dx.shape
    _launch("col2im_nhwc", dx.dtype, (cols, dx), dx.size, (h, w, c, oh, ow, kh, kw, stride, pad))


def maxpool_forward_nhwc(x, k, stride, out, argmax):
    """out, argmax (N, OH, OW, C) = max of each k x k window of x (N, H, W, C), and where."""
    _, h, w, c = x.shape
    _, oh, ow, _ = out.shape
    _launch("maxpool_forward_nhwc", x.dtype, (x, out, argmax), out.size,
            (h, w, c, oh, ow, k, stride))


def maxpool_backward_nhwc(dout, argmax, k, stride, dx):
    """dx (N, H, W, C): each window's gradient routed to its maximum (a gather)."""
    _, h, w, c = dx.shape
    _, oh, ow, _ = dout.shape
    _launch("maxpool_backward_nhwc", dx.dtype, (dout, argmax, dx), dx.size,
            (h, w, c, oh, ow, k, stride))


def relu_forward_flat(x, y, mask):
    """y = max(x, 0), mask = x > 0, on flat arrays."""
    _launch("relu_forward_flat", x.dtype, (x, y, mask), x.size, ())


def relu_backward_flat(dout, mask, dx):
    """dx = dout where mask, else 0, on flat arrays."""
    _launch("relu_backward_flat", dx.dtype, (dout, mask, dx), dx.size, ())


# -- GEMM: cuBLAS, with TF32 exactly when the TF32 switch allows it (backend.set_tf32) -----

def matmul(a, b, out):
    """out = a @ b by cuBLAS. float32 GEMMs use TF32 only while ``get_tf32()`` is True."""
    import cupy
    if a.dtype != np.float32:                   # TF32 concerns float32 inputs only
        return cupy.matmul(a, b, out=out)
    with float32_compute_type(tf32=get_tf32()):
        return cupy.matmul(a, b, out=out)


def channel_sums(a, out):
    """out (C,) = a.sum(axis=0) for a (M, C) array: two cuBLAS GEMVs (gpu_channels.py)."""
    from minivgg.kernels.gpu_channels import channel_sums as sums
    return sums(a, out)


_tf32_capable: dict[int, bool] = {}
_warned: set = set()


def _compute_type_api():
    """CuPy's per-dtype GEMM compute type: ``cupy._core._routines_linalg``, or None.

    There is no public setter (``CUPY_TF32=1`` is read once, at the first GEMM); CuPy's own
    tests use this module. Should a CuPy lack it, minivgg's GEMMs run with CuPy's default
    (exact float32 unless CUPY_TF32=1) and a request for TF32 is warned about, once.
    """
    try:
        from cupy._core import _routines_linalg as linalg
        linalg.get_compute_type, linalg.set_compute_type  # noqa: B018
        linalg.COMPUTE_TYPE_TF32, linalg.COMPUTE_TYPE_DEFAULT  # noqa: B018
    except (ImportError, AttributeError):
        return None
    return linalg


@contextlib.contextmanager
def float32_compute_type(tf32: bool):
    """Within the block, float32 GEMMs run in TF32 (if ``tf32`` and the GPU has it) or not.

    The previous compute type is restored afterwards, so nothing leaks into the user's
    other CuPy code. Nothing is set where the compute type is already the one wanted.
    """
    import cupy
    linalg = _compute_type_api()
    if linalg is None:
        if tf32 and "tf32" not in _warned:
            _warned.add("tf32")
            warnings.warn("minivgg: this CuPy has no GEMM compute-type setting "
                          "(cupy._core._routines_linalg); float32 GEMMs run with CuPy's "
                          "default", RuntimeWarning, stacklevel=3)
        yield
        return
    device = cupy.cuda.Device().id
    if device not in _tf32_capable:               # TF32 needs compute capability >= 8.0
        _tf32_capable[device] = int(cupy.cuda.Device().compute_capability) >= 80
    wanted = (linalg.COMPUTE_TYPE_TF32 if tf32 and _tf32_capable[device]
              else linalg.COMPUTE_TYPE_DEFAULT)
    previous = linalg.get_compute_type(np.float32)
    if previous == wanted:
        yield
        return
    linalg.set_compute_type(np.float32, wanted)
    try:
        yield
    finally:
        linalg.set_compute_type(np.float32, previous)
