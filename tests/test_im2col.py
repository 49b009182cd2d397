"""im2col and col2im are adjoint for every geometry (so col2im is im2col's exact gradient)."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnlab.conv import ConvGeometry, col2im, im2col


@st.composite
def geometries(draw):
    groups = draw(st.sampled_from([1, 2]))
    c = groups * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 9))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 9))
    return ConvGeometry.of((draw(st.integers(1, 3)), c, h, w), (groups, c // groups, kh, kw),
                           (draw(st.integers(1, 3)), draw(st.integers(1, 3))), (ph, pw), (dh, dw), groups)


@settings(max_examples=60, deadline=None)
@given(geometries(), st.integers(0, 2**31 - 1))
def test_col2im_is_the_adjoint_of_im2col(g, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(g.x_shape)
    cols = im2col(x, g)
    c = rng.standard_normal(cols.shape)
    lhs = float((cols * c).sum())
    rhs = float((x * col2im(c, g)).sum())
    assert abs(lhs - rhs) <= 1e-9 * max(1.0, abs(lhs))


def test_im2col_layout():
    g = ConvGeometry.of((1, 1, 3, 3), (1, 1, 2, 2))
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    cols = im2col(x, g)[0]
    # rows are kernel taps (0,0), (0,1), (1,0), (1,1); columns are the 2x2 output positions
    assert cols.tolist() == [[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]]
