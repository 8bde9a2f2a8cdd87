"""The terminal rater: `tunelab human rate` walks one rater through a sheet's items, one score at a time."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing

from tunelab.eval.human.store import (
    CRITERIA,
    SCORES,
    connect,
    pending_items,
    require_rater,
    require_sheet,
    save_rating,
)


def _ask_score(criterion: str, input: Callable[[str], str], output: Callable[[str], None]) -> int | None:
    """A 1-5 score for the criterion, asking again until one is given; None when the rater quits."""
    while True:
        try:
            answer = input(f"  {criterion} (1-5, q to quit): ").strip()
        except EOFError:
            return None
        if answer.lower() == "q":
            return None
        if answer.isdigit() and int(answer) in SCORES:
            return int(answer)
        output(f"  '{answer}' is not a score: type a whole number from 1 to 5 for {criterion}, or q to quit")


def rate_interactive(
    sheet: str, rater: str, input: Callable[[str], str] = input, output: Callable[[str], None] = print
) -> int:
    """Rate a sheet's items in the terminal, resuming where this rater left off.

    Each score is committed the moment it is typed, so quitting (q, end of input)
    or a killed session keeps everything rated so far. Returns how many items
    the rater finished in this session.
    """
    require_rater(rater)
    with closing(connect()) as connection:
        require_sheet(connection, sheet)
        pending, total = pending_items(connection, sheet, rater)
        output(
            f"sheet {sheet}, rater {rater}: {total - len(pending)} of {total} items rated, {len(pending)} to go. "
            f"Score each output 1 (poor) to 5 (excellent) for {', '.join(CRITERIA)}; q quits, your scores are kept."
        )
        for finished, (item_id, prompt, text, missing) in enumerate(pending):
            output(
                f"\n--- item {item_id} ({total - len(pending) + finished + 1} of {total}) ---\nPROMPT:\n{prompt}\n\nOUTPUT:\n{text}\n"
            )
            for criterion in missing:
                score = _ask_score(criterion, input, output)
                if score is None:
                    done = total - len(pending) + finished
                    output(
                        f"stopped: {done} of {total} items fully rated, {total - done} remain; "
                        f"run the same command again to continue"
                    )
                    return finished
                save_rating(connection, sheet, item_id, rater, criterion, score)
        output(f"done: all {total} items of sheet {sheet} are rated by {rater}")
        return len(pending)
