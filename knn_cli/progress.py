"""The step bar of `knn train`: the core reports steps and evaluations through callbacks, and
this turns them into what a person watches."""

from __future__ import annotations

from tqdm import tqdm

ETA_EVERY = 100  # steps between updates of the shown learning rate: it changes every step
NOT_YET = "-"  # the validation accuracy before the first evaluation has arrived


class TrainingBar:
    """Steps done, with the learning rate and the latest validation accuracy beside them.

    Until the first evaluation arrives the accuracy reads `-`: a 0.000 there would be a number
    nobody measured. An evaluation is shown when it is handed over (on the training thread, once
    the second thread has it ready), not at the bar's next timed redraw, which on a long step
    can be seconds later.
    """

    def __init__(self, total: int, *, initial: int = 0, desc: str = "", enabled: bool = True):
        self._eta: float | None = None
        self._val_accuracy: float | None = None
        self._bar = tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit="step",
            disable=not enabled,
            leave=True,
            dynamic_ncols=True,
            postfix=self.postfix(),
        )

    def postfix(self) -> str:
        shown = NOT_YET if self._val_accuracy is None else f"{self._val_accuracy:.3f}"
        eta = "" if self._eta is None else f"eta={self._eta:.2e}, "
        return f"{eta}val_acc={shown}"

    def step(self, step: int, eta: float) -> None:
        self._bar.update(1)
        if step % ETA_EVERY == 0:
            self._eta = eta
            self._bar.set_postfix_str(self.postfix(), refresh=False)

    def evaluated(self, val_accuracy: float, eta: float | None = None) -> None:
        self._val_accuracy = val_accuracy
        if eta is not None:
            self._eta = eta
        self._bar.set_postfix_str(self.postfix(), refresh=True)

    def close(self) -> None:
        self._bar.close()
