"""Bias via counterfactuals: the same examples rewritten into each group of a demographic attribute
(gendered words, first names), so any difference in the model's answers is down to that attribute alone.

For every attribute, the examples whose input mentions it are rewritten twice (all attribute words into
the female form, then into the male form; `tunelab.eval.counterfactual`). Classification reports the flip
rate (share of examples whose predicted label changes) and the metric gap between the groups; generation
tasks report the gap in the task metric, with each group's references rewritten like its inputs. Every
figure carries a paired-bootstrap 95% interval over the examples.
"""

from __future__ import annotations

import random
import time

from tunelab.eval.bootstrap import Interval, bootstrap_ci, format_interval, paired_bootstrap
from tunelab.eval.counterfactual import ATTRIBUTES, groups, mentions, to_group
from tunelab.eval.metrics import get_metric
from tunelab.eval.runner import run_task
from tunelab.eval.targets import Target
from tunelab.kinds import perturbed_kinds
from tunelab.records import Record
from tunelab.tasks import TaskError, TaskSpec

NO_LABEL = "(no label)"


def attribute_names(spec: str | list[str]) -> list[str]:
    """'all', a comma list or a list of attribute names, checked against the known ones."""
    names = list(ATTRIBUTES) if spec == "all" else (spec.split(",") if isinstance(spec, str) else spec)
    for name in names:
        groups(name)  # raises naming the known attributes
    return names


def _rewritten(value, attribute: str, group: str):
    if isinstance(value, str):
        return to_group(value, attribute, group)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [to_group(v, attribute, group) for v in value]
    return value


def counterfactual_records(records: list[Record], spec: TaskSpec, attribute: str, group: str) -> list[Record]:
    """Records with the input fields (and, for generation, the reference) rewritten into `group`."""
    fields = list(spec.input_fields) + ([spec.reference_field] if spec.reference_field else [])
    return [
        Record({**r.fields, **{f: _rewritten(r.fields[f], attribute, group) for f in fields}}, r.where)
        for r in records
    ]


def mentioning(records: list[Record], spec: TaskSpec, attribute: str, limit: int | None, seed: int) -> list[Record]:
    """The records whose input mentions the attribute: all, or `limit` of them drawn with `seed`."""
    found = [
        r
        for r in records
        if any(isinstance(r.fields.get(f), str) and mentions(r.fields[f], attribute) for f in spec.input_fields)
    ]
    if limit is not None and limit < len(found):
        found = [found[i] for i in sorted(random.Random(seed).sample(range(len(found)), limit))]
    return found


def _attribute_row(
    target: Target, spec: TaskSpec, records: list[Record], attribute: str, samples: int, seed: int
) -> dict:
    metric = get_metric(spec.primary_metric)
    first, second = groups(attribute)
    results = {
        g: run_task(target, spec, counterfactual_records(records, spec, attribute, g), samples, seed)
        for g in (first, second)
    }
    if results[first].skipped:
        raise TaskError(f"cannot test {target.name} on {spec.name}: {results[first].skipped}")
    a, b = results[first], results[second]
    row = {
        "examples": len(records),
        "groups": {g: r.scores[metric.name].as_dict() for g, r in results.items()},
        "example": {g: counterfactual_records(records[:1], spec, attribute, g)[0].fields for g in (first, second)},
    }
    predictions_a, references_a = a.metric_inputs(metric.name)
    predictions_b, references_b = b.metric_inputs(metric.name)
    gap = paired_bootstrap(
        metric, predictions_a, predictions_b, references_a, samples=samples, seed=seed, references_b=references_b
    )
    if spec.handler.head_answers:  # labels, which a swap can flip
        agreement = bootstrap_ci(
            get_metric("accuracy"),
            [p or NO_LABEL for p in b.predictions],
            [p or NO_LABEL for p in a.predictions],
            samples=samples,
            seed=seed,
        )
        row["flip_rate"] = Interval(100 - agreement.value, 100 - agreement.high, 100 - agreement.low).as_dict()
    row["gap"] = {**gap.as_dict(), "of": f"{second} - {first}"}
    row["significant"] = gap.low > 0 or gap.high < 0
    return row


def bias_report(
    target: Target,
    spec: TaskSpec,
    records: list[Record],
    attributes: list[str],
    limit: int | None = None,
    seed: int = 0,
    samples: int = 1000,
) -> dict:
    """Per attribute: each group's score, the gap between groups and (classification) the flip rate."""
    if not spec.handler.perturbed:
        raise TaskError(
            f"task {spec.name} ({spec.kind}) has no counterfactual test here; use a {perturbed_kinds()} task"
        )
    rows = {}
    for attribute in attributes:
        chosen = mentioning(records, spec, attribute, limit, seed)
        print(f"bias: {spec.name}, attribute {attribute}: {len(chosen)} examples mention it", flush=True)
        rows[attribute] = (
            _attribute_row(target, spec, chosen, attribute, samples, seed)
            if chosen
            else {"examples": 0, "skipped": f"no example of {spec.name} mentions {attribute}"}
        )
    return {
        "task": spec.name,
        "target": target.name,
        "metric": spec.primary_metric,
        "seed": seed,
        "bootstrap_samples": samples,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "attributes": rows,
    }


def render_bias(report: dict) -> str:
    lines = [
        f"# Counterfactual bias test of `{report['target']}` on {report['task']} ({report['metric']}, 95% CI)",
        "",
        "| attribute | examples | female | male | gap (male - female) | flip rate % |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in report["attributes"].items():
        if "skipped" in row:
            lines.append(f"| {name} | 0 | - | - | - | skipped: {row['skipped']} |")
            continue
        flips = format_interval(row["flip_rate"]) if "flip_rate" in row else "-"
        mark = " *" if row["significant"] else ""
        lines.append(
            f"| {name} | {row['examples']} | {format_interval(row['groups']['female'])} | {format_interval(row['groups']['male'])} | "
            f"{format_interval(row['gap'], signed=True)}{mark} | {flips} |"
        )
    lines += ["", "\\* the gap's interval excludes zero."]
    return "\n".join(lines) + "\n"
