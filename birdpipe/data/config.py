"""Parameters of the data stage: how recordings are split into cross-validation folds."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from birdpipe.schema import NonNegativeInt, Section


class FoldConfig(Section):
    n_folds: Annotated[int, Field(ge=2)] = 5
    seed: NonNegativeInt = 42
    #: Keep recordings sharing this metadata column (e.g. "author") in one fold.
    group_column: str | None = None
    #: Species with fewer recordings are never held out (fold -1): every fold model learns
    #: them, and they get no out-of-fold prediction. Unset: `n_folds`, so a species too rare
    #: to be validated in every fold is trained on in every fold. 0 holds every recording out
    #: once; species with fewer recordings than folds are then validated in some folds only.
    always_train_below: NonNegativeInt | None = None

    @property
    def always_train_threshold(self) -> int:
        """`always_train_below`, its default resolved."""
        return self.n_folds if self.always_train_below is None else self.always_train_below
