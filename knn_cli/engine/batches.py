"""A step's mini-batch as rows of the data set, gathered where it is used: whole, or a range of
features at a time by each lane of a split first layer (so each half lands in the cache of the
core that uses it). In a population, the members that draw the same batch (the same seed) form a
group, and `Batches` gathers every group's batch in one array, (G, n, d); `MemberGroups` says
which members each group's batch feeds and multiplies it by their stacked weights.

`AugmentedBatch` gathers the rows shifted and mirrored as `augment.augment` does, in the same
pass: a shift of an image is a change of where its rows of pixels are read from, so a strided
view of the data set (`np.lib.stride_tricks.as_strided`) starting at the shifted pixel gives
every image's shifted rows in one gather; the pixels it reads from beyond the image's edge are
then zeroed (the border only), and mirrored images reversed. It computes exactly what `augment` does
(tests/test_augment.py), in a fraction of its time (benchmarks/bench_augment.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import as_strided

from knn_cli.augment import IMAGE_SHAPE, Augmentation, Draws, augment

ROW = IMAGE_SHAPE[2]  # pixels in a row of an image: features come in runs of 32
ROWS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]  # rows of pixels in an image, its channels one after another


class Batch:
    """The rows `rows` of X (all of X when None)."""

    # On one thread, whether one gather of whole rows beats taking the features in two parts.
    whole_is_cheaper = True

    def __init__(self, X: np.ndarray, rows: np.ndarray | None = None) -> None:
        self.X, self.rows = X, rows

    def __len__(self) -> int:
        return len(self.X) if self.rows is None else len(self.rows)

    def whole(self) -> np.ndarray:
        return self.X if self.rows is None else self.X[self.rows]

    def take(self, features: slice) -> np.ndarray:
        return self.X[:, features] if self.rows is None else self.X[self.rows, features]

    def same_as(self, other: Batch) -> bool:
        """Whether `other` is this batch: the same rows of the same data."""
        if type(other) is not Batch or other.X is not self.X:
            return False
        if self.rows is None or other.rows is None:
            return self.rows is other.rows
        return np.array_equal(self.rows, other.rows)

    def kept(self) -> Batch:
        """A copy that later changes to the caller's rows array cannot reach."""
        return Batch(self.X, None if self.rows is None else self.rows.copy())


class AugmentedBatch(Batch):
    """The rows `rows` of the images X, augmented as `draws` says."""

    whole_is_cheaper = False  # its temporaries grow with the part taken (bench_augment.py)

    def __init__(
        self, X: np.ndarray, rows: np.ndarray, augmentation: Augmentation, draws: Draws
    ) -> None:
        super().__init__(X, rows)
        self.augmentation, self.draws = augmentation, draws
        p = augmentation.translate
        # Where each image's shifted first pixel is, in the data set as one flat array.
        self.starts = rows * X.shape[1] + (draws.top - p) * ROW + (draws.left - p)
        self.fast = augmentation.padding == "zero" and X.flags.c_contiguous
        self._whole: np.ndarray | None = None

    def whole(self) -> np.ndarray:
        if self._whole is None:
            self._whole = self.take(slice(0, self.X.shape[1]))
        return self._whole

    def take(self, features: slice) -> np.ndarray:
        first, stop = features.start or 0, features.stop
        if not (self.fast and first % ROW == 0 and stop % ROW == 0):
            return self._reference()[:, features]
        flat = self.X.reshape(-1)
        count = (stop - first) // ROW  # rows of pixels taken
        starts = self.starts + first
        last = len(flat) - count * ROW  # the last start whose rows lie inside the data
        if starts.min() < 0 or starts.max() > last:  # the first or last image, shifted out
            return self._reference()[:, features]
        step = flat.strides[0]
        # pixels[k] is the `count` rows of 32 pixels that start at flat[k].
        pixels = as_strided(flat, shape=(last + 1, count, ROW), strides=(step, ROW * step, step))
        part = pixels[starts]  # (n, count, 32): each image's rows, shifted
        draws, p = self.draws, self.augmentation.translate
        if p:
            _zero_beyond_edges(part, draws, p, first // ROW, stop // ROW)
        mirrored = draws.mirrored
        if mirrored.any():
            part[mirrored] = part[mirrored][..., ::-1]
        return part.reshape(len(part), -1)

    def same_as(self, other: Batch) -> bool:
        return other is self

    def kept(self) -> Batch:
        return self

    def _reference(self) -> np.ndarray:
        if self._whole is None:
            self._whole = augment(self.X[self.rows], self.augmentation, self.draws)
        return self._whole


def _zero_beyond_edges(part: np.ndarray, draws: Draws, p: int, first: int, stop: int) -> None:
    """Zero, in place, the pixels each shifted image read from beyond its own edge: its rows
    `first` to `stop` (of 96, the channels' rows one after another) as gathered in `part`.

    Only the border is written -- at most 3p rows and p columns an image -- found with one
    `nonzero` each, where multiplying by a mask would make two passes over the whole batch.
    """
    rows_out, columns_out = _outside(p)
    image, row = np.nonzero(rows_out[draws.top, first:stop])
    part[image, row] = 0
    image, column = np.nonzero(columns_out[draws.left])
    part[image, :, column] = 0


_OUTSIDE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _outside(p: int) -> tuple[np.ndarray, np.ndarray]:
    """By window position (top, or left; p is no shift): which of the 96 rows, and which of the
    32 columns, a window shows from beyond the image's edge."""
    if p not in _OUTSIDE:
        inside = np.zeros((2 * p + 1, ROW), dtype=bool)
        for window in range(2 * p + 1):
            shift = window - p
            inside[window, max(0, -shift) : ROW - max(0, shift)] = True
        _OUTSIDE[p] = (np.tile(~inside, (1, IMAGE_SHAPE[0])), ~inside)
    return _OUTSIDE[p]


class Batches:
    """A step's batch for each group of members, gathered together: (G, n, d)."""

    def __init__(self, batches: Sequence[Batch]) -> None:
        self.batches = tuple(batches)
        first = self.batches[0]
        if len(self.batches) == 1:  # a lone network's, every step: the short way
            self.plain = type(first) is Batch
            self.whole_is_cheaper = first.whole_is_cheaper
            self.rows = None if first.rows is None else True
            return
        self.plain = all(type(b) is Batch and b.X is first.X for b in self.batches)
        # One gather of whole rows is cheaper than two of halves unless a batch is augmented.
        self.whole_is_cheaper = all(b.whole_is_cheaper for b in self.batches)
        self.rows = None if any(b.rows is None for b in self.batches) else True

    @classmethod
    def of(cls, batch: Batches | Batch | np.ndarray | Sequence[Batch | np.ndarray]) -> Batches:
        """A step's batches from one batch (a population of one, or one group), an array of
        rows, or one per group."""
        if isinstance(batch, Batches):
            return batch
        if isinstance(batch, Batch | np.ndarray):
            batch = [batch]
        return cls([b if isinstance(b, Batch) else Batch(b) for b in batch])

    def __len__(self) -> int:
        """Rows per batch."""
        return len(self.batches[0])

    @property
    def groups(self) -> int:
        return len(self.batches)

    def whole(self) -> np.ndarray:
        """(G, n, d): every group's rows, all features."""
        if len(self.batches) == 1:
            return self.batches[0].whole()[None]
        if self.plain and all(b.rows is not None for b in self.batches):
            rows = np.concatenate([b.rows for b in self.batches])
            return self.batches[0].X[rows].reshape(len(self.batches), len(self), -1)
        return np.stack([b.whole() for b in self.batches])

    def take(self, features: slice) -> np.ndarray:
        """(G, n, h): every group's rows, the features `features`."""
        if len(self.batches) == 1:
            return self.batches[0].take(features)[None]
        if self.plain and all(b.rows is not None for b in self.batches):
            rows = np.concatenate([b.rows for b in self.batches])
            part = self.batches[0].X[rows, features]
            return part.reshape(len(self.batches), len(self), -1)
        return np.stack([b.take(features) for b in self.batches])

    def same_as(self, other: Batches) -> bool:
        return len(other.batches) == len(self.batches) and all(
            mine.same_as(theirs) for mine, theirs in zip(self.batches, other.batches, strict=True)
        )

    def kept(self) -> Batches:
        return Batches([b.kept() for b in self.batches])


class MemberGroups:
    """Which members of a population draw the same batch: `group_of[i]` is member i's group,
    the members of a group consecutive, groups numbered from 0 in order.

    `product` multiplies each group's rows by its members' stacked matrices: one NumPy call
    when the groups are of one size (a population of one, every member its own batch, or every
    batch shared by as many members), one per group otherwise. Each member's product is then
    computed exactly as it would be alone (the batched call multiplies matrix by matrix): what
    `X @ [W_1 ... W_P]` in one wide product would change in the last bits (README, Performance).
    """

    def __init__(self, group_of: Sequence[int]) -> None:
        group_of = [int(g) for g in group_of]
        if (
            not group_of
            or group_of[0] != 0
            or any(b - a not in (0, 1) for a, b in itertools.pairwise(group_of))
        ):
            raise ValueError(f"members' groups must run 0, 0, 1, ... in order, got {group_of}")
        self.group_of = tuple(group_of)
        self.members = len(group_of)
        self.count = group_of[-1] + 1
        starts = [i for i, g in enumerate(group_of) if i == 0 or g != group_of[i - 1]]
        self.slices = tuple(
            slice(start, stop)
            for start, stop in zip(starts, [*starts[1:], len(group_of)], strict=True)
        )
        sizes = {s.stop - s.start for s in self.slices}
        self.size = sizes.pop() if len(sizes) == 1 else None  # members per group, if all alike

    def product(
        self, A: np.ndarray | Sequence[np.ndarray], B: np.ndarray, out: np.ndarray
    ) -> np.ndarray:
        """out[i] = A[group of i] @ B[i]: A (G, a, b) per group (or a sequence of G (a, b)), B
        (P, b, c) and out (P, a, c) per member."""
        G, M = self.count, self.size
        if G == 1:
            return np.matmul(A[0], B, out=out)
        if not isinstance(A, np.ndarray):
            M = None  # group by group
        elif M == 1:
            return np.matmul(A, B, out=out)
        if M is not None:
            assert isinstance(A, np.ndarray)
            shape = (G, M, *out.shape[1:])
            np.matmul(A[:, None], B.reshape(G, M, *B.shape[1:]), out=out.reshape(shape))
            return out
        for group, members in enumerate(self.slices):
            np.matmul(A[group], B[members], out=out[members])
        return out

    def expand(self, per_group: np.ndarray) -> np.ndarray:
        """A new (P, ...) array: each member's copy of its group's (G, ...) entry."""
        return np.ascontiguousarray(per_group[list(self.group_of)])
