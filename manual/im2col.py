"""The same convolution layer the textbook way: im2col, matrix products, col2im.

Unfold every window of the padded input into a column (im2col)::

    cols[g, (c,a,β), (n,i,j)] = X̃[n, g·C_g + c, i·s_h + a·d_h, j·s_w + β·d_w]
                                 (G, C_g·k_h·k_w, N·H_out·W_out)

so that, with the kernels as rows, W_mat[g, o', (c,a,β)] = W[g·O_g + o', c, a, β],
the convolution is one (batched over groups) matrix product::

    Y_mat = W_mat cols + b                      (G, O_g, N·H_out·W_out)

and the layer is a linear layer whose rows are patches. Its backward is Johnson's
linear-layer backward, then the transpose of the unfolding::

    dW_mat = dY_mat colsᵀ                       (G, O_g, C_g·k_h·k_w)
    dcols  = W_matᵀ dY_mat                      (G, C_g·k_h·k_w, N·H_out·W_out)
    dX̃     = col2im(dcols)                      scatter-add each column entry back to
                                                the pixel it was read from; pixels in
                                                several windows (overlap) accumulate
    dX     = dX̃ without its padding
    db     = Σ_{n,i,j} dY[n,o,i,j]

col2im is done one tap (a, β) at a time: within a tap no two windows read the same
pixel, so it is k_h·k_w collision-free strided adds (manual._windows.unwindow).

This makes the derivation of manual.conv visible — dW is "input correlated with dY"
because colsᵀ holds the input windows, dX is "dY through the transposed kernel" because
W_matᵀ maps output channels back to input taps — at the price of a k_h·k_w-fold copy
of the input. Same signatures and conventions as manual.conv.

Sources: K. Chellapilla, S. Puri, P. Simard, "High Performance Convolutional Neural
Networks for Document Processing" (2006) — unfolding; J. Johnson, "Backpropagation for
a Linear Layer" (2017); the convolution-backprop posts of the source notes.
"""

import jax.numpy as jnp

from manual import _windows
from manual.conv import HIGHEST, geometry


def _pad(x, padding):
    (ph, pw) = padding
    return jnp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))


def im2col(x, g):
    """cols, (G, C_g·k_h·k_w, N·H_out·W_out), from x (N, C_in, H, W) and Geometry g."""
    n, c_in = x.shape[:2]
    taps = _windows.windows(_pad(x, g.padding), g.kernel, g.stride, g.dilation, g.out)
    patches = jnp.stack(taps, axis=2)  # (N, C_in, k_h·k_w, H_out, W_out)
    patches = patches.reshape(n, g.groups, c_in // g.groups, len(taps), *g.out)
    cols = patches.transpose(1, 2, 3, 0, 4, 5)  # (G, C_g, k_h·k_w, N, H_out, W_out)
    return cols.reshape(g.groups, -1, n * g.out[0] * g.out[1])


def col2im(dcols, x_shape, g):
    """The transpose of im2col: dX (N, C_in, H, W) from dcols (G, C_g·k_h·k_w, N·L)."""
    n, c_in, h, w = x_shape
    k = g.kernel[0] * g.kernel[1]
    d = dcols.reshape(c_in, k, n, *g.out).transpose(1, 2, 0, 3, 4)  # (k, N, C_in, ...)
    (ph, pw) = g.padding
    dx_pad = _windows.unwindow(list(d), (h + 2 * ph, w + 2 * pw), g.kernel, g.stride,
                               g.dilation)
    return dx_pad[:, :, ph:ph + h, pw:pw + w]


def _weight_matrix(w, g):
    c_out = w.shape[0]
    return w.reshape(g.groups, c_out // g.groups, -1)  # rows are the kernels


def _output_matrix(dy, g):
    n, c_out = dy.shape[:2]
    # (N, G·O_g, H_out, W_out) -> (G, O_g, N·H_out·W_out), the layout of W_mat cols
    return (dy.reshape(n, g.groups, c_out // g.groups, -1).transpose(1, 2, 0, 3)
            .reshape(g.groups, c_out // g.groups, -1))


def conv2d_im2col(x, w, b, *, stride=1, padding=0, dilation=1, groups=1):
    """conv2d as Y_mat = W_mat cols + b (see the module docstring).

    Args and Returns: as manual.conv.conv2d.
    """
    g = geometry(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    n, c_out = x.shape[0], w.shape[0]
    y_mat = jnp.matmul(_weight_matrix(w, g), im2col(x, g), precision=HIGHEST)
    y = y_mat.reshape(c_out, n, *g.out).transpose(1, 0, 2, 3)
    return y + b[None, :, None, None]


def conv2d_im2col_backward(x, w, b, dy, *, stride=1, padding=0, dilation=1, groups=1):
    """dW_mat = dY_mat colsᵀ, dX = col2im(W_matᵀ dY_mat), db = Σ dY.

    Args and Returns: as manual.conv.conv2d_backward.
    """
    g = geometry(x, w, b, dy, stride=stride, padding=padding, dilation=dilation,
                 groups=groups)
    dy_mat = _output_matrix(dy, g)
    cols = im2col(x, g)
    dw = jnp.matmul(dy_mat, cols.transpose(0, 2, 1), precision=HIGHEST).reshape(w.shape)
    dcols = jnp.matmul(_weight_matrix(w, g).transpose(0, 2, 1), dy_mat, precision=HIGHEST)
    dx = col2im(dcols, x.shape, g)
    db = dy.sum(axis=(0, 2, 3))
    return dx, dw, db
