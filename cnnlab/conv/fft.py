"""FFT convolution: every pass as a per-frequency channel contraction (stride 1, dilation 1).

With S = (SH, SW) >= (H + 2*PH, W + 2*PW) (a fast FFT length) and F the
real-FFT spectrum of size SH x (SW//2 + 1), correlation is a product in the
frequency domain, so each pass is one small complex GEMM per frequency:

    forward          Y[f]  = X[f] @ conj(W[f])^T    X (N, C), W (O, C) -> y = irfft2(Y)[:HO, :WO]
    backward_data    DX[f] = DY[f] @ W[f]           DY (N, O)          -> dx = irfft2(DX), cropped
    backward_weight  DW[f] = X[f]^T @ conj(DY[f])   -> dw = inverse DFT of DW at the KH x KW taps

(X = rfft2 of the zero-padded input, W = rfft2 of the kernel, DY = rfft2 of dy.)
Each complex GEMM runs as one real GEMM, [Re X | Im X] @ [[Re M, Im M], [-Im M, Re M]]
(numpy's complex64 matmul is many times slower than its float32 one). The weight
gradient evaluates its inverse transform only at the KH*KW kernel taps, as one
GEMM with a (F, KH*KW) DFT matrix, instead of an inverse FFT per (o, c) pair.

Cost: transforms O(N C S log S) + O(O C S log S), products 8 N O C |F| real
flops, independent of the kernel size: FFT wins for large kernels on large
images and loses to Winograd/im2col for 3x3 (see docs/convolution.md).
Memory: the kernel spectra (O, C, F) complex numbers (a 512x512 layer at
28x28 needs 1 GiB), so output channels (input channels for the data gradient) are
processed in blocks whose kernel spectra, their real block matrix and the block's
products together stay within BLOCK_BYTES; ``workspace_bytes`` reports the peak.
Groups: each group is an independent convolution on channel views.

Prepared weights (``prepare``): the kernel spectra of each group as the real block
matrix the pass multiplies by, (F, 2Cg, 2Og) for the forward, (F, 2Og, 2Cg) for the
data gradient (the transpose of the forward's; kept as its own contiguous copy, as
numpy's batched GEMM with a transposed operand was ~5% slower). Offered only where
they fit one block (BLOCK_BYTES, so the pass runs them whole), keyed by pass and FFT size.
"""
from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from ..backend import get_xp
from .algorithm import ConvAlgorithm, register
from .im2col import pad_input
from .threads import get_num_threads

BLOCK_BYTES = 64 << 20  # per block of channels: its kernel spectra, block matrix and products


def fft_shape(g) -> tuple[int, int]:
    """FFT size: the padded input, rounded up to a fast length for real transforms."""
    return (sfft.next_fast_len(g.h + 2 * g.padding[0], real=True),
            sfft.next_fast_len(g.w + 2 * g.padding[1], real=True))


def _complex(dtype):
    return np.result_type(dtype, np.complex64)


def _rfft2(a, s):
    return sfft.rfft2(a, s=s, axes=(-2, -1), workers=get_num_threads())


def _irfft2(a, s):
    return sfft.irfft2(a, s=s, axes=(-2, -1), workers=get_num_threads())


def _rows(spec):
    """(A, B, SH, SF) complex spectra -> (SH*SF, A, 2B) real: per frequency the complex
    (A x B) matrix as its real and imaginary parts side by side, [Re | Im]."""
    a, b = spec.shape[:2]
    flat = spec.reshape(a, b, -1)
    out = np.empty((flat.shape[2], a, 2 * b), dtype=spec.real.dtype)
    out[:, :, :b] = flat.real.transpose(2, 0, 1)
    out[:, :, b:] = flat.imag.transpose(2, 0, 1)
    return out


def _block(spec, conj=False, transpose=False):
    """(P, Q, SH, SF) complex spectra -> (SH*SF, 2P', 2Q') real with, per frequency f and
    M = spec[:, :, f] (transposed and/or conjugated as asked, P' x Q'),

        [[Re M, Im M], [-Im M, Re M]]   so that   [Re X | Im X] @ block = [Re XM | Im XM].

    Complex GEMMs become one real GEMM (numpy's complex matmul is several times slower
    than its float32 one here)."""
    flat = spec.reshape(spec.shape[0], spec.shape[1], -1)
    order = (2, 1, 0) if transpose else (2, 0, 1)
    re = flat.real.transpose(order)
    im = flat.imag.transpose(order)
    f, p, q = re.shape
    out = np.empty((f, 2 * p, 2 * q), dtype=re.dtype)
    out[:, :p, :q] = re
    out[:, p:, q:] = re
    if conj:
        np.negative(im, out=out[:, :p, q:])
        out[:, p:, :q] = im
    else:
        out[:, :p, q:] = im
        np.negative(im, out=out[:, p:, :q])
    return out


def _to_complex(rows, n, q, s):
    """(F, N, 2Q) real [Re | Im] -> (N, Q, SH, SF) complex spectra."""
    out = np.empty((n, q, rows.shape[0]), dtype=np.result_type(rows.dtype, np.complex64))
    out.real = rows[:, :, :q].transpose(1, 2, 0)
    out.imag = rows[:, :, q:].transpose(1, 2, 0)
    return out.reshape(n, q, s[0], s[1] // 2 + 1)


def _kernel_block(w, s):
    """w (O', C', KH, KW) -> (F, 2C', 2O'): conj(W[f])^T as a real block matrix (``_block``)."""
    return _block(_rfft2(w, s), conj=True, transpose=True)


def _blocks(total: int, per_item_bytes: int) -> list[tuple[int, int]]:
    step = max(1, min(total, BLOCK_BYTES // max(1, per_item_bytes)))
    return [(a, min(total, a + step)) for a in range(0, total, step)]


def _item_bytes(pass_, g, s, itemsize) -> int:
    """Peak bytes one channel of a block adds (output channels; input channels for the data
    gradient): forward / data gradient: the kernel spectra (complex) and their real block
    matrix (twice that), the products as real rows and as complex spectra, and the inverse
    FFT's output; weight gradient: the dy block matrix and the product, twice."""
    sh, sw = s
    nf = sh * (sw // 2 + 1)
    og, cg = g.o // g.groups, g.c // g.groups
    if pass_ == "backward_weight":
        return (4 * g.n + 4 * cg) * nf * itemsize
    other = cg if pass_ == "forward" else og
    return ((6 * other + 4 * g.n) * nf + g.n * sh * sw) * itemsize


def _tap_dft(s, kh, kw, dtype):
    """E (SH*SF, KH*KW) with  dw[k] = Re(sum_f DW[f] E[f, k])  = irfft2(DW)[p, q] at the taps."""
    sh, sw = s
    sf = sw // 2 + 1
    u = np.arange(sh)[:, None, None, None]
    v = np.arange(sf)[None, :, None, None]
    p = np.arange(kh)[None, None, :, None]
    q = np.arange(kw)[None, None, None, :]
    weight = np.where((v == 0) | ((sw % 2 == 0) & (v == sw // 2)), 1.0, 2.0)  # Hermitian halves
    e = weight * np.exp(2j * np.pi * (u * p / sh + v * q / sw)) / (sh * sw)
    return e.reshape(sh * sf, kh * kw).astype(_complex(dtype))


class FFTConv(ConvAlgorithm):
    name = "fft"
    array_modules = ("numpy",)      # scipy.fft and numpy buffers

    def supports(self, g, pass_):
        if g.stride != (1, 1):
            return f"stride {g.stride} (needs 1)"
        if g.dilation != (1, 1):
            return f"dilation {g.dilation} (needs 1)"
        return None


    def forward(self, x, w, g, prepared=None):
        self.require(g, "forward", xp=get_xp(x, w))
        s = fft_shape(g)
        dtype = np.result_type(x, w)
        y = np.empty(g.y_shape, dtype=dtype)
        xs_all = _rfft2(pad_input(x, g), s)                            # (N, C, SH, SF)
        item = _item_bytes("forward", g, s, np.dtype(dtype).itemsize)
        for i, (c0, c1, o0, o1) in enumerate(self._groups(g)):
            xf = _rows(xs_all[:, c0:c1])                                # (F, N, 2Cg)
            blocks = [(0, o1 - o0)] if prepared is not None else _blocks(o1 - o0, item)
            for b0, b1 in blocks:
                wb = yf = None                  # the last block's, freed before the next
                if prepared is not None:                                # one block: all of Og
                    wb = prepared[i]
                else:
                    wb = _kernel_block(w[o0 + b0:o0 + b1], s)           # (F, 2Cg, 2Ob)
                yf = _to_complex(np.matmul(xf, wb), g.n, b1 - b0, s)    # X conj(W)^T
                y[:, o0 + b0:o0 + b1] = _irfft2(yf, s)[:, :, :g.ho, :g.wo]
        return y

    def backward_data(self, dy, w, g, prepared=None):
        self.require(g, "backward_data", xp=get_xp(dy, w))
        s = fft_shape(g)
        ph, pw = g.padding
        dtype = np.result_type(dy, w)
        dx = np.empty(g.x_shape, dtype=dtype)
        dys_all = _rfft2(dy, s)                                         # (N, O, SH, SF)
        item = _item_bytes("backward_data", g, s, np.dtype(dtype).itemsize)
        for i, (c0, c1, o0, o1) in enumerate(self._groups(g)):
            dyf = _rows(dys_all[:, o0:o1])                              # (F, N, 2Og)
            blocks = [(0, c1 - c0)] if prepared is not None else _blocks(c1 - c0, item)
            for b0, b1 in blocks:
                wb = dxf = None                 # the last block's, freed before the next
                if prepared is not None:                                # one block: all of Cg
                    wb = prepared[i]
                else:
                    wb = _block(_rfft2(w[o0:o1, b0:b1], s))              # (F, 2Og, 2Cb)
                dxf = _to_complex(np.matmul(dyf, wb), g.n, b1 - b0, s)   # DY W
                dx[:, c0 + b0:c0 + b1] = _irfft2(dxf, s)[:, :, ph:ph + g.h, pw:pw + g.w]
        return dx

    def prepared_key(self, g, pass_):
        og, cg = g.o // g.groups, g.c // g.groups
        sh, sw = fft_shape(g)
        if pass_ == "backward_weight" or og * cg * sh * (sw // 2 + 1) * 16 > BLOCK_BYTES:
            return None                                 # more than one block: not kept
        return ("spectra", pass_, (sh, sw), g.groups)

    def prepare(self, w, g, pass_, reuse=None):  # noqa: ARG002 - spectra are not reused
        if self.prepared_key(g, pass_) is None:
            return None
        s = fft_shape(g)
        if pass_ == "forward":
            return tuple(_kernel_block(w[o0:o1], s) for _, _, o0, o1 in self._groups(g))
        return tuple(_block(_rfft2(w[o0:o1], s)) for _, _, o0, o1 in self._groups(g))

    def prepared_bytes(self, g, pass_, itemsize):
        if self.prepared_key(g, pass_) is None:
            return 0
        sh, sw = fft_shape(g)
        return 4 * (g.o // g.groups) * g.c * sh * (sw // 2 + 1) * itemsize

    def backward_weight(self, dy, x, g):
        self.require(g, "backward_weight", xp=get_xp(dy, x))
        s = fft_shape(g)
        dtype = np.result_type(dy, x)
        dw = np.empty(g.w_shape, dtype=dtype)
        taps = _tap_dft(s, g.kh, g.kw, dtype)                           # (F, KH*KW) complex
        taps_ri = np.concatenate([taps.real.T, -taps.imag.T], axis=1)   # (KH*KW, 2F)
        taps_ri = np.ascontiguousarray(taps_ri, dtype=dtype)
        xs_all = _rfft2(pad_input(x, g), s)
        dys_all = _rfft2(dy, s)
        item = _item_bytes("backward_weight", g, s, np.dtype(dtype).itemsize)
        for c0, c1, o0, o1 in self._groups(g):
            xf = _rows(xs_all[:, c0:c1].transpose(1, 0, 2, 3))          # (F, Cg, 2N): X^T
            nf = xf.shape[0]
            for b0, b1 in _blocks(o1 - o0, item):
                dyb = dwf = parts = None        # the last block's, freed before the next
                dyb = _block(dys_all[:, o0 + b0:o0 + b1], conj=True)     # (F, 2N, 2Ob)
                dwf = np.matmul(xf, dyb)                                # (F, Cg, 2Ob): X^T conj(DY)
                cb, ob = c1 - c0, b1 - b0
                # dw at the taps = Re(sum_f E[f] DW[f]) = sum_f (Re E Re DW - Im E Im DW)
                parts = dwf.reshape(nf, cb, 2, ob).transpose(2, 0, 1, 3).reshape(2 * nf, cb * ob)
                k = np.matmul(taps_ri, parts)                           # (KH*KW, Cg*Ob)
                dw[o0 + b0:o0 + b1] = k.reshape(g.kh, g.kw, cb, ob).transpose(3, 2, 0, 1)
        return dw

    def workspace_bytes(self, g, pass_, itemsize):
        """Peak extra memory of one pass (not counting its output): the padded input, the
        input's (dy's) spectra and their frequency-major rows for one group, and one block
        (``_item_bytes`` per channel; the weight gradient also keeps dy's spectra and its
        (F, KH*KW) tap matrix)."""
        s = fft_shape(g)
        nf = s[0] * (s[1] // 2 + 1)
        og, cg = g.o // g.groups, g.c // g.groups
        pad = g.n * g.c * (g.h + 2 * g.padding[0]) * (g.w + 2 * g.padding[1]) * itemsize
        pad = pad if any(g.padding) and pass_ != "backward_data" else 0
        if pass_ == "backward_data":
            spectra = 2 * g.n * (g.o + og) * nf * itemsize
            items = cg
        elif pass_ == "forward":
            spectra = 2 * g.n * (g.c + cg) * nf * itemsize
            items = og
        else:
            spectra = 2 * (g.n * (g.c + g.o + cg) + 2 * g.kh * g.kw) * nf * itemsize
            items = og
        item = _item_bytes(pass_, g, s, itemsize)
        b0, b1 = _blocks(items, item)[0]
        return int(pad + spectra + (b1 - b0) * item)


register(FFTConv())
