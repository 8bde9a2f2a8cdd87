"""Inter-rater agreement: Krippendorff's alpha (ordinal) over a sheet's items, from the `krippendorff` package.

Alpha is undefined with fewer than two raters, with no item rated twice, or when every score is the same; the
result then says which, instead of a number the package would compute from nothing.
"""

from __future__ import annotations

import krippendorff
import numpy as np

from tunelab.eval.human.store import SCORES


def _agreement_matrix(ratings: list[tuple[str, str, int]]) -> np.ndarray:
    """Raters x items matrix of (rater, item_id, score) triples, NaN where a rater did not rate an item."""
    raters = sorted({rater for rater, _, _ in ratings})
    items = sorted({item for _, item, _ in ratings})
    matrix = np.full((len(raters), len(items)), np.nan)
    for rater, item, score in ratings:
        matrix[raters.index(rater), items.index(item)] = score
    return matrix


def krippendorff_alpha(ratings: list[tuple[str, str, int]]) -> dict:
    """Krippendorff's ordinal alpha over items, or None with the reason it is undefined."""
    matrix = _agreement_matrix(ratings)
    raters = matrix.shape[0]
    shared = int((np.sum(~np.isnan(matrix), axis=0) >= 2).sum())
    base = {"raters": raters, "shared_items": shared}
    if raters < 2:
        return {**base, "alpha": None, "reason": f"{raters} rater(s); agreement needs at least 2"}
    if not shared:
        return {**base, "alpha": None, "reason": "no item was rated by two raters"}
    if len({score for _, _, score in ratings}) < 2:
        return {**base, "alpha": None, "reason": "every score is the same, so chance agreement is undefined"}
    alpha = krippendorff.alpha(reliability_data=matrix, level_of_measurement="ordinal", value_domain=list(SCORES))
    return {**base, "alpha": float(alpha), "reason": None}
