"""Human evaluation of generated text: blind rating sheets, ratings in SQLite, and a report.

Automatic metrics (ROUGE, exact match) say little about whether an answer reads
well, so people rate outputs of two systems side by side: the base model and a
tuned run, or two tuned runs. The flow, one module per step:

    sheets.export_sheet     generate both systems' outputs (answers.py) for the first N test prompts and write a
                            blind CSV (item_id, prompt, output) in shuffled order, with opaque ids; the key
                            (item -> system) goes to SQLite and `<sheet>.key.json`
    terminal.rate_interactive / pairs.save_pair (the web app) / ratings_csv.import_csv
                            collect 1-5 scores for fluency, coherence and relevance per item and rater
    summary.report / markdown.render_report
                            per-system means with 95% CIs, B's win rate over A, Krippendorff's alpha (agreement.py)

Everything lives in `$TUNELAB_HOME/human.db` (store.py).
"""

from tunelab.eval.human.markdown import render_report
from tunelab.eval.human.pairs import next_pair, save_pair, sheet_progress
from tunelab.eval.human.ratings_csv import import_csv
from tunelab.eval.human.sheets import SystemOutputs, export_sheet, write_sheet
from tunelab.eval.human.store import CRITERIA, HumanEvalError, db_path
from tunelab.eval.human.summary import report
from tunelab.eval.human.terminal import rate_interactive

__all__ = [
    "CRITERIA",
    "HumanEvalError",
    "SystemOutputs",
    "db_path",
    "export_sheet",
    "import_csv",
    "next_pair",
    "rate_interactive",
    "render_report",
    "report",
    "save_pair",
    "sheet_progress",
    "write_sheet",
]
