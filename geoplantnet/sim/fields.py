"""Stationary random fields and hashes that are pure functions of (seed, map coordinates).

Everything the virtual region draws in space comes from here, so any window, any resolution and any scattered point
set can be evaluated on its own and still agree exactly with every other evaluation: windows stitch bit for bit and
``at_points`` equals the gridded value at the same coordinates.

A :class:`RandomField` is a sum of random Fourier features (Rahimi & Recht 2007): ``sqrt(2/n) sum_k cos(w_k . p +
phi_k)`` with ``w_k ~ N(0, I / l^2)``, i.e. a Gaussian-covariance field with length scale ``l``, mean ~0 and variance
~1. On a grid ``cos(a + b) = cos a cos b - sin a sin b`` separates into 1-D factors, so an ``h x w`` window costs
``O(n (h + w))`` transcendental calls and ``O(n h w)`` multiply-adds. The multiply-adds are done by explicit numpy
ufuncs in a fixed order (not BLAS, whose blocking depends on the array shape), which is what makes the result
independent of the window.
"""

from __future__ import annotations

import numpy as np

# Rows per accumulation block: keeps the (rows, width) float32 accumulator in L2 cache while looping over waves.
_BLOCK_ELEMENTS = 1 << 15
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


class FieldError(ValueError):
    """Bad parameters for a random field (seed, length scale, number of waves) or mismatched coordinates."""


def _seed_sequence(seed: int, *keys: int) -> np.random.Generator:
    if seed < 0 or any(k < 0 for k in keys):
        raise FieldError(f"seed and keys must be non-negative integers, got seed={seed}, keys={keys}")
    return np.random.default_rng([int(seed), *map(int, keys)])


class RandomField:
    """Stationary Gaussian-like random field from random Fourier features.

    The value at any point is a pure function of (seed, coordinates), so any window or point set is evaluated
    independently and windows stitch exactly.
    """

    def __init__(self, seed: int, length_scale: float, n_waves: int = 64) -> None:
        if not length_scale > 0:
            raise FieldError(f"length_scale must be positive metres, got {length_scale}")
        if n_waves < 1:
            raise FieldError(f"n_waves must be >= 1, got {n_waves}")
        rng = _seed_sequence(int(seed), 0xF1E1D)
        self.seed = int(seed)
        self.length_scale = float(length_scale)
        self.n_waves = int(n_waves)
        self.wx = rng.normal(0.0, 1.0 / length_scale, n_waves)
        self.wy = rng.normal(0.0, 1.0 / length_scale, n_waves)
        self.phase = rng.uniform(0.0, 2.0 * np.pi, n_waves)
        self._amp = np.float32(np.sqrt(2.0 / n_waves))

    def __repr__(self) -> str:
        return f"RandomField(seed={self.seed}, length_scale={self.length_scale:g}, n_waves={self.n_waves})"

    # --- the separable factors ------------------------------------------------------------------------------------
    def _factors(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
        """(cos a, sin a, cos b, sin b), each (n_waves, len), with a = wx x + phase, b = wy y; float32."""
        x = np.asarray(x, dtype="float64").ravel()
        y = np.asarray(y, dtype="float64").ravel()
        a = self.wx[:, None] * x[None, :] + self.phase[:, None]
        b = self.wy[:, None] * y[None, :]
        return (
            np.cos(a).astype("float32"),
            np.sin(a).astype("float32"),
            np.cos(b).astype("float32"),
            np.sin(b).astype("float32"),
        )

    def _accumulate(self, factors: tuple[np.ndarray, ...], shape: tuple[int, ...], grid: bool, gradient: bool):
        """Sum the waves in a fixed order; the same float32 operations per element in grid and point mode."""
        cx, sx, cy, sy = factors
        out = np.empty(shape, dtype="float32")
        gx = np.empty(shape, dtype="float32") if gradient else None
        gy = np.empty(shape, dtype="float32") if gradient else None
        wx = (self.wx * self._amp).astype("float32")
        wy = (self.wy * self._amp).astype("float32")
        n_rows = shape[0]
        step = max(1, _BLOCK_ELEMENTS // max(1, shape[1])) if grid else _BLOCK_ELEMENTS
        for r0 in range(0, n_rows, step):
            r1 = min(n_rows, r0 + step)
            block = (r1 - r0, *shape[1:])
            acc = np.zeros(block, dtype="float32")
            tmp = np.empty(block, dtype="float32")
            tmp2 = np.empty(block, dtype="float32") if gradient else None
            dx = np.zeros(block, dtype="float32") if gradient else None
            dy = np.zeros(block, dtype="float32") if gradient else None
            for k in range(self.n_waves):
                if grid:  # rows follow y, columns follow x
                    cyk, syk = cy[k, r0:r1, None], sy[k, r0:r1, None]
                    cxk, sxk = cx[k][None, :], sx[k][None, :]
                else:
                    cyk, syk, cxk, sxk = cy[k, r0:r1], sy[k, r0:r1], cx[k, r0:r1], sx[k, r0:r1]
                np.multiply(cyk, cxk, out=tmp)
                acc += tmp
                np.multiply(syk, sxk, out=tmp)
                acc -= tmp
                if gradient:
                    # d/dx cos(a + b) = -wx sin(a + b) = -wx (sin a cos b + cos a sin b)
                    np.multiply(sxk, cyk, out=tmp)
                    np.multiply(cxk, syk, out=tmp2)
                    tmp += tmp2
                    np.multiply(tmp, wx[k], out=tmp2)
                    dx -= tmp2
                    np.multiply(tmp, wy[k], out=tmp2)
                    dy -= tmp2
            np.multiply(acc, self._amp, out=out[r0:r1])
            if gradient:
                gx[r0:r1] = dx
                gy[r0:r1] = dy
        return (out, gx, gy) if gradient else out

    # --- public evaluation --------------------------------------------------------------------------------------
    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Field on the grid of 1-D centre coordinates (metres): float32 ``(len(y), len(x))``."""
        x, y = np.asarray(x), np.asarray(y)
        return self._accumulate(self._factors(x, y), (y.size, x.size), grid=True, gradient=False)

    def at_points(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Field at scattered points (1-D coordinate arrays of equal length): float32 1-D."""
        x, y = _points(x, y)
        return self._accumulate(self._factors(x, y), (x.size,), grid=False, gradient=False)

    def with_gradient(self, x: np.ndarray, y: np.ndarray, *, points: bool = False):
        """(value, d/dx, d/dy) on a grid (or at points), the derivatives in 1/metre; exact, not finite differences."""
        if points:
            x, y = _points(x, y)
            return self._accumulate(self._factors(x, y), (x.size,), grid=False, gradient=True)
        x, y = np.asarray(x), np.asarray(y)
        return self._accumulate(self._factors(x, y), (y.size, x.size), grid=True, gradient=True)

    def evaluate(self, x: np.ndarray, y: np.ndarray, *, points: bool = False) -> np.ndarray:
        """``self(x, y)`` or ``self.at_points(x, y)``: one call for code that serves both modes."""
        return self.at_points(x, y) if points else self(x, y)


def _points(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype="float64").ravel()
    y = np.asarray(y, dtype="float64").ravel()
    if x.shape != y.shape:
        raise FieldError(f"at_points needs x and y of equal length, got {x.size} and {y.size}")
    return x, y


def mesh(x: np.ndarray, y: np.ndarray, *, points: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Broadcastable (x, y) for element-wise formulas: (1, w) and (h, 1) on a grid, the 1-D arrays at points."""
    if points:
        return _points(x, y)
    return np.asarray(x, dtype="float64")[None, :], np.asarray(y, dtype="float64")[:, None]


def hash_uniform(seed: int, *keys: np.ndarray | int) -> np.ndarray:
    """Uniform [0, 1) float64 from integer keys (broadcast), a pure function of (seed, keys): splitmix64 chained."""
    with np.errstate(over="ignore"):
        h = np.asarray(np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15), dtype="uint64")
        for key in keys:
            k = np.asarray(key).astype("int64").view("uint64") if np.ndim(key) else np.uint64(np.int64(key))
            h = _splitmix(h ^ k)
    return (h >> np.uint64(11)).astype("float64") * (1.0 / (1 << 53))


def _splitmix(z: np.ndarray) -> np.ndarray:
    z = (z + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
    z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
    z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
    return z ^ (z >> np.uint64(31))
