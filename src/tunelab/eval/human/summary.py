"""A sheet's ratings summed up per criterion: each system's mean with a bootstrap CI, B's win rate over A, and
inter-rater agreement."""

from __future__ import annotations

from collections import defaultdict
from contextlib import closing
from fractions import Fraction
from typing import NamedTuple

import numpy as np

from tunelab.eval.human.agreement import krippendorff_alpha
from tunelab.eval.human.store import CRITERIA, connect, require_sheet

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


class _Rating(NamedTuple):
    item_id: str
    system: str
    prompt_index: int
    rater: str
    criterion: str
    score: int


def _mean_with_ci(scores_by_item: dict[str, list[int]], rng: np.random.Generator) -> dict:
    """Mean of all ratings with a 95% percentile bootstrap CI that resamples items (ratings of one item stay together)."""
    groups = [np.array(scores, dtype=float) for scores in scores_by_item.values()]
    count = sum(len(group) for group in groups)
    if not count:
        return {"mean": None, "ci_low": None, "ci_high": None, "ratings": 0, "items": 0}
    sums = np.array([group.sum() for group in groups])
    sizes = np.array([len(group) for group in groups])
    picks = rng.integers(0, len(groups), size=(BOOTSTRAP_RESAMPLES, len(groups)))
    resampled = sums[picks].sum(axis=1) / sizes[picks].sum(axis=1)
    low, high = np.percentile(resampled, [2.5, 97.5])
    return {
        "mean": float(sums.sum() / count),
        "ci_low": float(low),
        "ci_high": float(high),
        "ratings": int(count),
        "items": len(groups),
    }


def _win_rate(by_prompt: dict[int, dict[str, list[int]]], system_a: str, system_b: str) -> dict:
    """Shares of prompts where B's mean score (over raters) beats, ties or loses to A's; exact fractions decide ties."""
    outcomes = {"win": 0, "tie": 0, "loss": 0}
    for systems in by_prompt.values():
        if systems.get(system_a) and systems.get(system_b):
            a, b = (Fraction(sum(systems[s]), len(systems[s])) for s in (system_a, system_b))
            outcomes["win" if b > a else "tie" if b == a else "loss"] += 1
    compared = sum(outcomes.values())
    shares = {key: (value / compared if compared else None) for key, value in outcomes.items()}
    return {**shares, "prompts": compared}


def report(sheet: str) -> dict:
    """Summary of a sheet's ratings, per criterion.

    - scores: per system, the mean of all ratings with a 95% CI from a percentile
      bootstrap over items (2000 resamples, seed 0; an item's ratings are resampled
      together, since raters of one output are not independent), and the counts;
    - win_rate: per prompt, B's mean score over raters against A's: win/tie/loss shares;
    - agreement: Krippendorff's alpha (ordinal, over items), None with a reason when undefined.
    """
    with closing(connect()) as connection:
        system_a, system_b = require_sheet(connection, sheet)
        rows = [
            _Rating(*row)
            for row in connection.execute(
                "SELECT r.item_id, i.system, i.prompt_index, r.rater, r.criterion, r.score FROM ratings r "
                "JOIN items i ON i.sheet = r.sheet AND i.item_id = r.item_id WHERE r.sheet = ?",
                (sheet,),
            )
        ]
        item_count = connection.execute("SELECT COUNT(*) FROM items WHERE sheet = ?", (sheet,)).fetchone()[0]
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    scores, win_rate, agreement = {system_a: {}, system_b: {}}, {}, {}
    for criterion in CRITERIA:
        rated = [r for r in rows if r.criterion == criterion]
        for system in (system_a, system_b):
            by_item = defaultdict(list)
            for r in rated:
                if r.system == system:
                    by_item[r.item_id].append(r.score)
            scores[system][criterion] = _mean_with_ci(by_item, rng)
        by_prompt = defaultdict(lambda: defaultdict(list))
        for r in rated:
            by_prompt[r.prompt_index][r.system].append(r.score)
        win_rate[criterion] = _win_rate(by_prompt, system_a, system_b)
        agreement[criterion] = krippendorff_alpha([(r.rater, r.item_id, r.score) for r in rated])
    return {
        "sheet": sheet,
        "systems": {"A": system_a, "B": system_b},
        "items": item_count,
        "raters": sorted({r.rater for r in rows}),
        "ratings": len(rows),
        "ci": f"95% percentile bootstrap over items ({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED})",
        "scores": scores,
        "win_rate": win_rate,
        "agreement": agreement,
    }
