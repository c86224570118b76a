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
pixel, so it is k_h·k_w collision-free strided adds (manual.windows.unwindow).

This makes the derivation of manual.conv visible — dW is "input correlated with dY"
because colsᵀ holds the input windows, dX is "dY through the transposed kernel" because
W_matᵀ maps output channels back to input taps — at the price of a k_h·k_w-fold copy
of the input. Same signatures and conventions as manual.conv (asymmetric and
"same"/"valid" padding, unbatched (C, H, W) input), resolved by manual.conv.geometry;
the padding enters only as the two crops of X̃, so it needs nothing of its own here.

Sources: K. Chellapilla, S. Puri, P. Simard, "High Performance Convolutional Neural
Networks for Document Processing" (2006) — unfolding; J. Johnson, "Backpropagation for
a Linear Layer" (2017); the convolution-backprop posts of the source notes.

Example::

    >>> import jax.numpy as jnp
    >>> from manual import im2col
    >>> x, w, b = jnp.ones((1, 3, 3)), jnp.ones((1, 1, 2, 2)), jnp.zeros(1)
    >>> im2col.conv2d_im2col(x, w, b, padding=((0, 1), (0, 0)))[0].tolist()
    [[4.0, 4.0], [4.0, 4.0], [2.0, 2.0]]
    >>> dx, dw, db = im2col.conv2d_im2col_backward(x, w, b, jnp.ones((1, 2, 2)))
    >>> dx[0].tolist()
    [[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]
"""

import jax.numpy as jnp

from manual import windows
from manual.conv import HIGHEST, Geometry, geometry
from manual.windows import Array, ArrayLike, IntOrPair, Padding

__all__ = ["im2col", "col2im", "conv2d_im2col", "conv2d_im2col_backward"]


def _pad(x, padding):
    return jnp.pad(x, ((0, 0), (0, 0)) + tuple(padding))


def im2col(x: ArrayLike, g: Geometry) -> Array:
    """cols, (G, C_g·k_h·k_w, N·H_out·W_out), from x (N, C_in, H, W) and Geometry g."""
    n, c_in = x.shape[:2]
    taps = windows.windows(_pad(x, g.padding), g.kernel, g.stride, g.dilation, g.out)
    patches = jnp.stack(taps, axis=2)  # (N, C_in, k_h·k_w, H_out, W_out)
    patches = patches.reshape(n, g.groups, c_in // g.groups, len(taps), *g.out)
    cols = patches.transpose(1, 2, 3, 0, 4, 5)  # (G, C_g, k_h·k_w, N, H_out, W_out)
    return cols.reshape(g.groups, -1, n * g.out[0] * g.out[1])


def col2im(dcols: ArrayLike, x_shape: tuple, g: Geometry) -> Array:
    """The transpose of im2col: dX (N, C_in, H, W) from dcols (G, C_g·k_h·k_w, N·L)."""
    n, c_in, h, w = x_shape
    k = g.kernel[0] * g.kernel[1]
    d = dcols.reshape(c_in, k, n, *g.out).transpose(1, 2, 0, 3, 4)  # (k, N, C_in, ...)
    (top, bottom), (left, right) = g.padding
    dx_pad = windows.unwindow(list(d), (h + top + bottom, w + left + right), g.kernel,
                              g.stride, g.dilation)
    return dx_pad[:, :, top:top + h, left:left + w]  # dX̃ without its padding


def _weight_matrix(w, g):
    c_out = w.shape[0]
    return w.reshape(g.groups, c_out // g.groups, -1)  # rows are the kernels


def _output_matrix(dy, g):
    n, c_out = dy.shape[:2]
    # (N, G·O_g, H_out, W_out) -> (G, O_g, N·H_out·W_out), the layout of W_mat cols
    return (dy.reshape(n, g.groups, c_out // g.groups, -1).transpose(1, 2, 0, 3)
            .reshape(g.groups, c_out // g.groups, -1))


def conv2d_im2col(x: ArrayLike, w: ArrayLike, b: ArrayLike, *, stride: IntOrPair = 1,
                  padding: Padding = 0, dilation: IntOrPair = 1, groups: int = 1) -> Array:
    """conv2d as Y_mat = W_mat cols + b (see the module docstring).

    Args and Returns: as manual.conv.conv2d.
    """
    g = geometry(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    x4 = windows.batched(x)
    n, c_out = x4.shape[0], w.shape[0]
    y_mat = jnp.matmul(_weight_matrix(w, g), im2col(x4, g), precision=HIGHEST)
    y = y_mat.reshape(c_out, n, *g.out).transpose(1, 0, 2, 3)
    return windows.unbatched_like(y + b[None, :, None, None], x)


def conv2d_im2col_backward(x: ArrayLike, w: ArrayLike, b: ArrayLike, dy: ArrayLike, *,
                           stride: IntOrPair = 1, padding: Padding = 0,
                           dilation: IntOrPair = 1,
                           groups: int = 1) -> tuple[Array, Array, Array]:
    """dW_mat = dY_mat colsᵀ, dX = col2im(W_matᵀ dY_mat), db = Σ dY.

    Args and Returns: as manual.conv.conv2d_backward.
    """
    g = geometry(x, w, b, dy, stride=stride, padding=padding, dilation=dilation,
                 groups=groups)
    x4, dy4 = windows.batched(x), windows.batched(dy)
    dy_mat = _output_matrix(dy4, g)
    cols = im2col(x4, g)
    dw = jnp.matmul(dy_mat, cols.transpose(0, 2, 1), precision=HIGHEST).reshape(w.shape)
    dcols = jnp.matmul(_weight_matrix(w, g).transpose(0, 2, 1), dy_mat, precision=HIGHEST)
    dx = col2im(dcols, x4.shape, g)
    db = dy4.sum(axis=(0, 2, 3))
    return windows.unbatched_like(dx, x), dw, db
