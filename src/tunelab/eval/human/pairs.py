"""Rating in pairs, for the web app: both blind outputs of one prompt side by side, scored and stored together."""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass

from tunelab.eval.human.store import (
    CRITERIA,
    SCORES,
    HumanEvalError,
    connect,
    known_sheets,
    pending_items,
    require_rater,
    require_sheet,
    save_rating,
    transaction,
)


@dataclass
class PendingPair:
    """A prompt whose outputs one rater has not fully rated: both systems' items, in the sheet's shuffled order,
    so the rater sees two blind outputs side by side without knowing which system wrote which."""

    prompt: str
    item_ids: list[str]
    outputs: list[str]
    number: int
    """This pair's place among the sheet's pairs, counting from 1."""
    total: int


def sheet_progress() -> list[dict]:
    """Every sheet with its item count and how many items each rater has fully rated (no system names: a rater
    picks a sheet from this list, and the key stays hidden)."""
    with closing(connect()) as connection:
        sheets = []
        for name in known_sheets(connection):
            items = connection.execute("SELECT COUNT(*) FROM items WHERE sheet = ?", (name,)).fetchone()[0]
            done = connection.execute(
                "SELECT rater, COUNT(*) FROM (SELECT rater, item_id FROM ratings WHERE sheet = ? "
                "GROUP BY rater, item_id HAVING COUNT(*) = ?) GROUP BY rater ORDER BY rater",
                (name, len(CRITERIA)),
            ).fetchall()
            sheets.append({"name": name, "items": items, "rated": dict(done)})
        return sheets


def next_pair(sheet: str, rater: str) -> PendingPair | None:
    """The first pair, in sheet order, that the rater has not fully rated; None when every item is rated.

    Pairs are ordered by their first item's position, and within a pair the items keep their positions, so the
    order and the sides are the shuffled sheet's, the same for every rater."""
    require_rater(rater)
    with closing(connect()) as connection:
        require_sheet(connection, sheet)
        pending, _ = pending_items(connection, sheet, rater)
        items = connection.execute(
            "SELECT item_id, prompt_index, prompt, output FROM items WHERE sheet = ? ORDER BY position", (sheet,)
        ).fetchall()
    pairs: dict[int, list[tuple[str, str, str]]] = {}
    for item_id, prompt_index, prompt, output in items:
        pairs.setdefault(prompt_index, []).append((item_id, prompt, output))
    unrated = {item_id for item_id, *_ in pending}
    for number, pair in enumerate(pairs.values(), start=1):
        if any(item_id in unrated for item_id, _, _ in pair):
            return PendingPair(pair[0][1], [i for i, _, _ in pair], [o for _, _, o in pair], number, len(pairs))
    return None


def save_pair(sheet: str, rater: str, scores: dict[str, dict[str, int]]) -> None:
    """Store a rater's scores for one pair: every criterion of every item, 1-5, all committed together.

    The scores must cover one pair of the sheet, whole; anything else is refused before a score is written, with
    the item and criterion named. Re-rating replaces the rater's earlier scores."""
    require_rater(rater)
    with closing(connect()) as connection:
        require_sheet(connection, sheet)
        indexes = dict(connection.execute("SELECT item_id, prompt_index FROM items WHERE sheet = ?", (sheet,)))
        unknown = [item_id for item_id in scores if item_id not in indexes]
        if unknown:
            raise HumanEvalError(f"item(s) {', '.join(unknown)} are not in sheet '{sheet}'")
        prompts = {indexes[item_id] for item_id in scores}
        if len(prompts) > 1:
            raise HumanEvalError("rate the outputs of one prompt together, not of several")
        pair = [item_id for item_id, index in indexes.items() if index in prompts]
        for item_id in pair:
            for criterion in CRITERIA:
                score = scores.get(item_id, {}).get(criterion)
                if score not in SCORES:
                    raise HumanEvalError(f"item {item_id}: {criterion} needs a whole score from 1 to 5, got {score!r}")
        with transaction(connection):
            for item_id, given in scores.items():
                for criterion in CRITERIA:
                    save_rating(connection, sheet, item_id, rater, criterion, given[criterion])
