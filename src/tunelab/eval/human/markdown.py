"""The Markdown report of a sheet's summary: what `tunelab human report` prints and the web app shows."""

from __future__ import annotations

from tunelab.eval.human.store import CRITERIA


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def render_report(summary: dict) -> str:
    """The report as Markdown: a scores table, B's win rate over A, and inter-rater agreement."""
    a, b = summary["systems"]["A"], summary["systems"]["B"]
    lines = [
        f"# Human evaluation: {summary['sheet']}",
        "",
        f"A = {a}; B = {b}. {summary['items']} items, {summary['ratings']} ratings from "
        f"{len(summary['raters'])} rater(s): {', '.join(summary['raters']) or 'none yet'}. Scores are 1-5.",
        "",
        "## Scores",
        "",
        f"Mean [95% CI] (n = ratings); CI: {summary['ci']}.",
        "",
        "| system | " + " | ".join(CRITERIA) + " |",
        "|---|" + "---|" * len(CRITERIA),
    ]
    for system in (a, b):
        cells = []
        for criterion in CRITERIA:
            cell = summary["scores"][system][criterion]
            cells.append(
                "n/a (0 ratings)"
                if cell["mean"] is None
                else f"{cell['mean']:.2f} [{cell['ci_low']:.2f}, {cell['ci_high']:.2f}] (n={cell['ratings']})"
            )
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## B over A",
        "",
        "Per prompt, B's mean score over raters against A's.",
        "",
        "| criterion | win | tie | loss | prompts |",
        "|---|---|---|---|---|",
    ]
    for criterion in CRITERIA:
        cell = summary["win_rate"][criterion]
        lines.append(
            f"| {criterion} | {_percent(cell['win'])} | {_percent(cell['tie'])} | {_percent(cell['loss'])} | {cell['prompts']} |"
        )
    lines += [
        "",
        "## Inter-rater agreement",
        "",
        "Krippendorff's alpha, ordinal (1 = perfect, 0 = chance).",
        "",
        "| criterion | alpha | raters | items rated by 2+ raters |",
        "|---|---|---|---|",
    ]
    for criterion in CRITERIA:
        cell = summary["agreement"][criterion]
        alpha = f"n/a: {cell['reason']}" if cell["alpha"] is None else f"{cell['alpha']:.3f}"
        lines.append(f"| {criterion} | {alpha} | {cell['raters']} | {cell['shared_items']} |")
    return "\n".join(lines) + "\n"
