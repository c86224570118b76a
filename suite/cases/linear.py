"""Linear layer cases: Y = X W + b against jax.vjp (Johnson 2017)."""

from manual import linear
from suite.cases import Family, register, register_family
from suite.cases.common import normal, split, vjp_case

register_family(Family(
    name="linear",
    title="Linear layer",
    description="Y = X W + b over a minibatch; dX = dY Wᵀ, dW = Xᵀ dY, db = Σₙ dYₙ "
                "(Johnson, \"Backpropagation for a Linear Layer\").",
))


__all__ = ["SHAPES"]


def _builder(n, d, m):
    def build(key, dtype):
        k = split(key, "x w b dy".split())
        return dict(x=normal(k["x"], (n, d), dtype), w=normal(k["w"], (d, m), dtype),
                    b=normal(k["b"], (m,), dtype), dy=normal(k["dy"], (n, m), dtype))
    return build


# (name, N, D, M, tier): the degenerate dimensions one at a time, square and not, and
# one large shape that only the report runs.
SHAPES = (
    ("N1", 1, 5, 3, "test"),
    ("D1", 7, 1, 4, "test"),
    ("M1", 6, 5, 1, "test"),
    ("all1", 1, 1, 1, "test"),
    ("square", 8, 8, 8, "test"),
    ("nonsquare", 13, 7, 5, "test"),
    ("batch256", 256, 128, 64, "test"),
    ("large", 4096, 1024, 1024, "report"),
    ("bench-1024", 1024, 1024, 1024, "bench"),
)

for label, n, d, m, tier in SHAPES:
    register(vjp_case(
        name=f"linear/{label}", family="linear", build=_builder(n, d, m),
        forward=linear.forward, backward=linear.backward, primals=("x", "w", "b"),
        sizes=dict(N=n, D=d, M=m), tier=tier))
