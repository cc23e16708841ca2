import numpy as np
import pytest

from knn_cli.schedule import cyclical_learning_rate


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 1e-5),
        (2250, 0.1),
        (4500, 1e-5),
        (6750, 0.1),
        (9000, 1e-5),
        (1125, (1e-5 + 0.1) / 2),
        (3375, (1e-5 + 0.1) / 2),
    ],
)
def test_corners_of_the_cycle(step: int, expected: float) -> None:
    assert cyclical_learning_rate(step, 1e-5, 0.1, 2250) == pytest.approx(expected)


def test_linear_between_corners_and_vectorized() -> None:
    steps = np.arange(0, 4 * 10 + 1)
    etas = cyclical_learning_rate(steps, 0.0, 1.0, 10)
    assert np.allclose(np.abs(np.diff(etas)), 0.1)
    assert etas.max() == 1.0 and etas.min() == 0.0
    assert np.all(np.diff(etas[:11]) > 0) and np.all(np.diff(etas[10:21]) < 0)
