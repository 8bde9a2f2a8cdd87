"""Scoring one target on one task: prompts -> answers -> parsed predictions -> metrics with bootstrap intervals.

Every report (suites, forgetting, robustness, bias) is built from `run_task`, so a metric means the same
thing everywhere. The result keeps the parsed predictions and references, which is what paired comparisons
(base vs tuned, clean vs perturbed) resample, and, when a metric asks for it, the NLL of each reference answer
given its prompt (`reference_perplexity`), each preference pair's two answers' NLL given its prompt
(`preference_accuracy`), and each text scored as lm-evaluation-harness scores it (`word_perplexity` and the other
lm-eval perplexities).

A generating model's prompt may follow demonstrations (few-shot, `tunelab.eval.fewshot`), as many as fit the input,
and it answers a classification task by generating a label's words or, scored `loglik`, by the label whose words
are most likely after the prompt (rank classification); both read the same prompts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from tunelab.config import RunConfig, TrainingConfig
from tunelab.eval.bootstrap import Interval, bootstrap_ci
from tunelab.eval.fewshot import draw_demonstrations
from tunelab.eval.generate import Answer, batches_by_length, generate_answers, pad_batch
from tunelab.eval.metrics import AnswerLikelihood, MetricError, TextLikelihood, get_metric, unmatched_share
from tunelab.eval.predict import classify
from tunelab.eval.progress import progress
from tunelab.eval.rewards import pair_scores, scored_records
from tunelab.eval.rolling import rolling_nll
from tunelab.eval.targets import Target, TargetError
from tunelab.kinds import KINDS
from tunelab.kinds.encoding import IGNORE_INDEX, decoder_prompt_ids, formatted_prompt_ids
from tunelab.records import Record
from tunelab.render import Demonstration, with_demonstrations
from tunelab.tasks import TaskSpec


@dataclass
class TaskResult:
    task: str
    kind: str
    examples: int
    scores: dict[str, Interval] = field(default_factory=dict)
    predictions: list = field(default_factory=list)
    """What the metrics read: labels (None = matched no label), texts, tag lists, or (nll, tokens) pairs."""
    references: list = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    """The model's raw answers (generated text, or the predicted label of a classifier or of rank classification)."""
    unmatched: float | None = None
    """Generative classification: share (0-100) of answers that named no label."""
    skipped: str | None = None
    """Why the target cannot do this task; no scores then."""
    reference_nll: list[tuple[float, int]] = field(default_factory=list)
    """Each reference answer's summed NLL given its prompt and its token count; computed only when a metric of
    the task reads it (a forward pass over every record)."""
    scoring: str | None = None
    """How the answers were read: 'head' (a classifier), 'generate', or 'loglik' (the most likely label); None for
    perplexity."""
    shots: int = 0
    """Demonstrations asked for before each prompt (few-shot prompting)."""
    shown: list[int] = field(default_factory=list)
    """Demonstrations each prompt really held: the first ones are dropped when a prompt would not fit the input."""
    rolling_nll: list[TextLikelihood] = field(default_factory=list)
    """A language-modelling task's texts scored by lm-eval's convention (prefix token, every token once); computed
    only when a metric of the task reads it (a second pass over the texts)."""
    precision: str | None = None
    """The dtype(s) of the weights that answered (`Target.precision`)."""
    finishes: list[str] = field(default_factory=list)
    """How each generated answer ended: 'stop' (EOS, the closing token, or a stop string) or 'length' (it ran out of
    max_new_tokens); what `stop_rate` counts. Empty when nothing was generated."""
    pair_nll: list[tuple[AnswerLikelihood, AnswerLikelihood]] = field(default_factory=list)
    """Each preference pair's (chosen, rejected) answers' summed NLL given its prompt and token counts; computed
    only when a metric of the task reads it. Unpaired records (one answer judged good or bad) have none."""
    notes: list[str] = field(default_factory=list)
    """What a reader of the scores must know: records a metric left out, and why."""
    unscored: dict[str, str] = field(default_factory=dict)
    """Metrics of the task that no record could be scored on, each with why (a preference accuracy of unpaired
    records); absent from `scores`."""

    def metric_inputs(self, name: str) -> tuple[list, list]:
        """The (predictions, references) metric `name` scores: the parsed answers and their references, or the
        reference answers' (nll, tokens) pairs or the texts' lm-eval likelihoods, which need no references."""
        reads = get_metric(name).reads
        if reads == "answers":
            return self.predictions, self.references
        if reads == "finishes" and not self.finishes:
            raise MetricError(
                f"{name} counts how generated answers end; task {self.task} was answered by {self.scoring}, which "
                "generates nothing: score it with --scoring generate, or drop the metric"
            )
        scored = {
            "reference_nll": self.reference_nll,
            "pair_nll": self.pair_nll,
            "rolling_nll": self.rolling_nll,
            "finishes": self.finishes,
        }
        return scored[reads], [None] * len(scored[reads])

    def as_dict(self) -> dict:
        result = {"kind": self.kind, "examples": self.examples}
        if self.skipped:
            return {**result, "skipped": self.skipped}
        if self.scoring:
            result["scoring"] = self.scoring
        result["precision"] = self.precision
        result["shots"] = self.shots
        if self.shots:
            result["demonstrations_shown"] = sum(self.shown) / len(self.shown) if self.shown else 0.0
        result["metrics"] = {name: interval.as_dict() for name, interval in self.scores.items()}
        if self.unmatched is not None:
            result["unmatched_share"] = self.unmatched
        if self.unscored:
            result["unscored"] = self.unscored
        if self.notes:
            result["notes"] = self.notes
        return result


REFERENCE_LOGITS = 64 * 2**20
"""Most logits one reference-NLL forward may hold (256 MiB in fp32): the batch shrinks below the target's batch
size when its longest example times the vocabulary would exceed it (Gemma's vocabulary has 262k tokens)."""


def reads(spec: TaskSpec, inputs: str) -> bool:
    """Whether a metric of the task scores `inputs` (a `Metric.reads` value): the reference answers' or the pairs'
    NLL cost a forward pass per record, lm-eval's rolling likelihoods a second pass over the texts."""
    return any(get_metric(name).reads == inputs for name in spec.metrics)


def skip_reason(target: Target, spec: TaskSpec, shots: int = 0, records: Sequence[Record] = ()) -> str | None:
    """Why `target` cannot be scored on `spec` (with `shots` demonstrations in each prompt, on `records`), or None
    when it can."""
    if target.unavailable:
        return target.unavailable
    if target.reward != spec.handler.scored_by_reward:
        if target.reward:
            return f"{target.name} is a reward model; it scores answers to a reward task, not a {spec.kind} task"
        return (
            f"a {spec.kind} task is scored by a reward model's scalar head, which {target.name} is not; train one "
            "with data.kind: reward"
        )
    if target.reward:
        return None
    if not target.generates and (reads(spec, "reference_nll") or reads(spec, "pair_nll")):
        return f"{target.name} is a classifier; it gives no probability to an answer's tokens"
    if target.generates and spec.handler.prompted and spec.handler.templated and not spec.templates:
        return f"task {spec.name} has no instruction template, so a generating model cannot be asked it"
    if not target.generates:
        if not spec.handler.head_answers:
            return f"{target.name} is a classifier; it cannot answer a {spec.kind} task"
        if set(target.labels or []) != set(spec.label_words):
            return f"{target.name} predicts labels {target.labels}, task {spec.name} has {sorted(spec.label_words)}"
        if not 1 <= len(spec.input_fields) <= 2:
            return f"a classifier reads one text or a text pair; task {spec.name} has inputs {spec.input_fields}"
        if shots:
            return f"{target.name} answers through a trained head, which reads no demonstrations; use 0 shots"
    elif not target.decoder and not (spec.handler.prompted and spec.handler.templated):
        return f"a {spec.kind} task is scored on decoder models only"
    elif shots and not spec.handler.templated:
        return f"a {spec.kind} task carries its own context; it is asked with 0 shots"
    elif unreadable := spec.handler.unreadable_by(target.tokenizer, spec, records):
        return f"{target.name} {unreadable}"
    return None


def input_limit(target: Target, spec: TaskSpec | None = None) -> int:
    """The longest input: the task's own limit or the target's, within the model's position table (models
    without one, such as T5, take the limit as it is)."""
    limit = (spec.max_length if spec is not None else None) or target.max_length
    return min(limit, getattr(target.model.config, "max_position_embeddings", None) or limit)


def prompt_ids(target: Target, prompt: str, max_new_tokens: int, spec: TaskSpec | None = None) -> list[int]:
    """Prompt ids that leave room for the answer within the input limit."""
    if target.decoder:
        return decoder_prompt_ids(prompt, target.tokenizer, max(8, input_limit(target, spec) - max_new_tokens))[0]
    return target.tokenizer(prompt, truncation=True, max_length=input_limit(target, spec))["input_ids"]


def record_prompt_ids(target: Target, spec: TaskSpec, record: Record, room: int) -> list[int]:
    """A record's zero-shot prompt ids, leaving `room` tokens for the answer: its task's first template filled, or
    the prompt an untemplated kind makes of it (a conversation up to its last assistant turn)."""
    if spec.handler.templated:
        return prompt_ids(target, spec.prompt(record), room, spec)
    return spec.handler.prompt_ids(spec, record, target.tokenizer, max(8, input_limit(target, spec) - room))


def _demonstrated_ids(target: Target, prompt: str, demonstrations: list[Demonstration]) -> list[int]:
    """The uncut ids of a prompt after its demonstrations, as the target reads them."""
    if target.decoder:
        return formatted_prompt_ids(prompt, target.tokenizer, demonstrations)
    return target.tokenizer(with_demonstrations(prompt, demonstrations))["input_ids"]


def shown_prompt_ids(
    target: Target, spec: TaskSpec, prompt: str, demonstrations: list[Demonstration], room: int
) -> tuple[list[int], int]:
    """The ids of a prompt after as many of its demonstrations as fit the input limit, leaving a decoder `room`
    tokens for its answer, and how many that is. The first demonstrations go first; when none fit, the prompt is
    the zero-shot one, cut as zero-shot cuts it, so demonstrations never cost the query any of its text."""
    limit = input_limit(target, spec) - (room if target.decoder else 0)
    for first in range(len(demonstrations)):
        ids = _demonstrated_ids(target, prompt, demonstrations[first:])
        if len(ids) <= limit:
            return ids, len(demonstrations) - first
    return prompt_ids(target, prompt, room, spec), 0


def task_prompts(
    target: Target, spec: TaskSpec, records: list[Record], demonstrations: list[list[Demonstration]], room: int
) -> tuple[list[list[int]], list[int]]:
    """Each record's prompt ids (the task's first template, after its demonstrations) and the demonstrations
    each shows."""
    if not spec.handler.templated:
        return [record_prompt_ids(target, spec, record, room) for record in records], [0] * len(records)
    pairs = [shown_prompt_ids(target, spec, spec.prompt(r), d, room) for r, d in zip(records, demonstrations)]
    return [ids for ids, _ in pairs], [shown for _, shown in pairs]


def generated(
    target: Target, spec: TaskSpec, records: list[Record], prompts: list[list[int]] | None = None
) -> list[Answer]:
    """The target's generated answers to the records and how each ended, phrased with the task's first template or
    as the kind asks (or to `prompts`, their prompt ids with demonstrations, `task_prompts`)."""
    if prompts is None:
        prompts = [record_prompt_ids(target, spec, record, spec.max_new_tokens) for record in records]
    return generate_answers(
        target.model,
        target.tokenizer,
        prompts,
        decoder_only=target.decoder,
        batch_size=target.batch_size,
        max_new_tokens=spec.max_new_tokens,
        num_beams=spec.num_beams,
        stop=spec.stop,
    )


def answers(
    target: Target, spec: TaskSpec, records: list[Record], prompts: list[list[int]] | None = None
) -> list[str]:
    """The texts of `generated`."""
    return [answer.text for answer in generated(target, spec, records, prompts)]


def classifier_predictions(target: Target, spec: TaskSpec, records: list[Record]) -> list[dict]:
    """A classifier's label and label probabilities for each record, read with the task's text fields."""
    data = spec.data_config(input_limit(target, spec))
    config = RunConfig(data=data, training=TrainingConfig(eval_batch_size=target.batch_size))
    return classify(target.model, target.tokenizer, records, config, target.labels)


@torch.inference_mode()
def _text_nll(target: Target, text: str, window: int, stride: int) -> tuple[float, int]:
    """Summed next-token NLL of a text and how many tokens it covers, with a sliding window for long texts
    (each window scores only the tokens the previous one did not, with up to window - stride tokens of context)."""
    ids = target.tokenizer(text, return_tensors="pt")["input_ids"][0].to(target.model.device)
    total, count, scored_to = 0.0, 0, 1  # the first token has no context and is never scored
    for end in range(min(window, len(ids)), len(ids) + stride, stride):
        end = min(end, len(ids))
        start = max(0, end - window)
        logits = target.model(input_ids=ids[start:end].unsqueeze(0)).logits[0, :-1].float()
        log_probs = logits.log_softmax(-1).gather(-1, ids[start + 1 : end].unsqueeze(-1)).squeeze(-1)
        fresh = log_probs[scored_to - start - 1 :]
        total -= float(fresh.sum())
        count += len(fresh)
        scored_to = end
        if end == len(ids):
            break
    return total, count


def _nll_pairs(target: Target, spec: TaskSpec, records: list[Record]) -> list[tuple[float, int]]:
    window = input_limit(target, spec)
    texts = [str(r.fields[spec.text_field]) for r in records]
    return [_text_nll(target, text, window, max(1, window // 2)) for text in progress(len(texts), "perplexity", texts)]


def _padded_labels(examples: list[dict], device) -> torch.Tensor:
    """The examples' labels, right-padded with IGNORE_INDEX to the longest."""
    width = max(len(e["labels"]) for e in examples)
    return torch.tensor([e["labels"] + [IGNORE_INDEX] * (width - len(e["labels"])) for e in examples], device=device)


def _batch_nll(target: Target, examples: list[dict]) -> list[tuple[float, int]]:
    """Summed NLL of each example's answer tokens (labels other than IGNORE_INDEX) and their count, in one forward.

    Decoders are padded on the right, so every token keeps its position, and project onto the vocabulary only
    the columns from the earliest answer on (`logits_to_keep`); the logits are aligned from the right, which also
    holds when a prompt-learning method prepends virtual tokens.
    """
    device = next(target.model.parameters()).device
    batch = pad_batch(examples, target.tokenizer.pad_token_id, left=False, device=device)
    labels = _padded_labels(examples, device)
    if target.decoder:
        width, scored = labels.shape[1], labels != IGNORE_INDEX
        # a row with nothing to score (a conversation cut before its first assistant turn) sets no bound
        first = int(scored.int().argmax(dim=1)[scored.any(dim=1)].min()) if scored.any() else width - 1
        keep = width - first + 1
        logits = target.model(**batch, use_cache=False, logits_to_keep=keep).logits[:, -keep:-1]
        gold = labels[:, width - keep + 1 :]
    else:
        logits, gold = target.model(**batch, labels=labels, use_cache=False).logits, labels
    pairs = []
    for row_logits, row_gold in zip(logits, gold):
        scored = row_gold != IGNORE_INDEX
        log_probs = row_logits[scored].float().log_softmax(-1).gather(-1, row_gold[scored].unsqueeze(-1))
        pairs.append((-float(log_probs.sum()), int(scored.sum())))
    return pairs


@torch.inference_mode()
def _examples_nll(target: Target, examples: list[dict]) -> list[tuple[float, int]]:
    """`_batch_nll` of every example, in length-sorted batches that keep within REFERENCE_LOGITS (results in
    example order)."""
    target.model.eval()
    longest = max((max(len(e["input_ids"]), len(e["labels"])) for e in examples), default=1)
    batch_size = max(1, min(target.batch_size, REFERENCE_LOGITS // (longest * len(target.tokenizer))))
    pairs: list[tuple[float, int]] = [(0.0, 0)] * len(examples)
    with progress(len(examples), "log-likelihoods") as bar:
        for indices in batches_by_length([e["input_ids"] for e in examples], batch_size):
            for i, pair in zip(indices, _batch_nll(target, [examples[i] for i in indices])):
                pairs[i] = pair
            bar.update(len(indices))
    return pairs


def reference_nll(target: Target, spec: TaskSpec, records: list[Record]) -> list[tuple[float, int]]:
    """Each record's reference answer scored as a continuation of its prompt (the kind's `reference_examples`: a
    prompt's answer, every assistant turn of a conversation): the summed NLL of its tokens and their count, in
    length-sorted batches (results in record order)."""
    if not spec.handler.reference_answers:
        scored = [name for name, kind in KINDS.items() if kind.reference_answers]
        raise MetricError(
            f"reference_perplexity scores reference answers; task {spec.name} is a {spec.kind} task. "
            f"Use it with a {' or '.join(scored)} task"
        )
    examples = spec.handler.reference_examples(
        spec, records, target.tokenizer, target.family, input_limit(target, spec)
    )
    return _examples_nll(target, examples)


def pair_nll(target: Target, spec: TaskSpec, records: list[Record]) -> list[tuple[AnswerLikelihood, AnswerLikelihood]]:
    """Each preference pair's chosen and rejected answer scored as a continuation of its prompt (the kind's
    `preference_examples`, which leaves out unpaired records): (summed NLL, tokens) of each, in pair order."""
    examples = spec.handler.preference_examples(spec, records, target.tokenizer, input_limit(target, spec))
    scored = _examples_nll(target, [answer for pair in examples for answer in pair])
    return list(zip(scored[0::2], scored[1::2]))


def _score_pairs(target: Target, spec: TaskSpec, records: list[Record], result: TaskResult) -> None:
    """The pairs' likelihoods into `result`, saying which records the pair metrics left out (unpaired ones), or
    why those metrics are not scored when no record is a pair."""
    result.pair_nll = pair_nll(target, spec, records)
    metrics = [name for name in spec.metrics if get_metric(name).reads == "pair_nll"]
    unpaired = len(records) - len(result.pair_nll)
    if not result.pair_nll:
        reason = (
            f"none of the {len(records)} records is a pair (chosen and rejected answers) to compare; unpaired "
            "examples (prompt, completion, label) are judged one answer at a time"
        )
        result.unscored.update(dict.fromkeys(metrics, reason))
    elif unpaired:
        result.notes.append(
            f"{', '.join(metrics)}: {unpaired} of {len(records)} records are unpaired examples (one answer judged "
            "good or bad), left out: there is no second answer to compare"
        )


def label_continuations(target: Target, spec: TaskSpec) -> list[list[int]]:
    """Each label's first label word, in label order, tokenised as training's encoder tokenises an answer but
    without the EOS it ends one with: rank classification scores how an answer starts, not that it stops there
    (lm-evaluation-harness and T0 append no EOS either)."""
    tokenizer, continuations = target.tokenizer, []
    for label, words in spec.label_words.items():
        if target.decoder:
            ids = tokenizer(words[0], add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer(text_target=words[0])["input_ids"]
            ids = ids[:-1] if ids[-1:] == [tokenizer.eos_token_id] else ids
        if not ids:
            raise TargetError(f"task {spec.name}: label {label}'s first label word {words[0]!r} has no tokens")
        continuations.append(ids)
    return continuations


def _continued(target: Target, prompt: list[int], continuation: list[int]) -> dict:
    """A prompt and one continuation as `_batch_nll` scores them: a decoder reads both with the continuation
    labelled; an encoder-decoder reads the prompt and is labelled with the continuation."""
    if target.decoder:
        ids = prompt + continuation
        labels = [IGNORE_INDEX] * len(prompt) + continuation
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}
    return {"input_ids": prompt, "attention_mask": [1] * len(prompt), "labels": continuation}


def label_loglikelihoods(
    target: Target, spec: TaskSpec, records: list[Record], prompts: list[list[int]] | None = None
) -> list[dict[str, float]]:
    """What rank classification ranks: for each record, each label's summed log-likelihood of its continuation
    (`label_continuations`) after the record's prompt (zero-shot, or `prompts`, `task_prompts`)."""
    labels, continuations = list(spec.label_words), label_continuations(target, spec)
    if prompts is None:
        prompts = task_prompts(target, spec, records, [[]] * len(records), max(map(len, continuations)))[0]
    examples = [_continued(target, prompt, continuation) for prompt in prompts for continuation in continuations]
    nll = [total for total, _ in _examples_nll(target, examples)]
    return [
        {label: -total for label, total in zip(labels, nll[start : start + len(labels)])}
        for start in range(0, len(nll), len(labels))
    ]


def answer_room(target: Target, spec: TaskSpec, scoring: str | None) -> int:
    """Tokens a decoder's prompt leaves for its answer: the longest generated answer, or, scored by loglik, the
    longest label continuation."""
    if scoring == "loglik":
        return max(map(len, label_continuations(target, spec)))
    return spec.max_new_tokens


def scoring_of(target: Target, spec: TaskSpec, scoring: str | None = None) -> str | None:
    """How `target` answers `spec`: by a reward model's scores, through its head, by generating, or, for a
    classification task on a generating model, as `scoring` says (default the task's own `scoring`); None for
    perplexity."""
    if not spec.handler.prompted:
        return None
    if target.reward:
        return "reward"
    if not target.generates:
        return "head"
    return (scoring or spec.scoring) if spec.handler.head_answers else "generate"


def predictions_for(
    target: Target,
    spec: TaskSpec,
    records: list[Record],
    prompts: list[list[int]] | None = None,
    scoring: str | None = "generate",
) -> tuple[list, list, list[str], list[str]]:
    """(metric predictions, metric references, raw outputs, how each generated output ended: empty when nothing was
    generated) of `target` on `records`; a generating target reads `prompts` (`task_prompts`; zero-shot when absent)
    and answers a classification task as `scoring` says (the label it ranks first is then its output)."""
    kind = spec.handler
    if not kind.prompted:  # the text itself is scored
        pairs = _nll_pairs(target, spec, records)
        return (
            pairs,
            [None] * len(pairs),
            [f"nll={n:.3f} tokens={c} ppl={math.exp(n / max(c, 1)):.2f}" for n, c in pairs],
            [],
        )
    references = kind.references(spec, records)
    if scoring == "reward":  # each pair's (chosen, rejected) scores
        pairs = pair_scores(target, spec, records, input_limit(target, spec))
        return pairs, references, [f"chosen {chosen:.4f}, rejected {rejected:.4f}" for chosen, rejected in pairs], []
    if scoring == "head":
        labels = [p["label"] for p in classifier_predictions(target, spec, records)]
        return labels, references, labels, []
    if scoring == "loglik":  # the most likely label; the first of them on a tie
        labels = [max(scores, key=scores.get) for scores in label_loglikelihoods(target, spec, records, prompts)]
        return labels, references, labels, []
    answered = generated(target, spec, records, prompts)
    outputs = [answer.text for answer in answered]
    return kind.parse(spec, outputs, records), references, outputs, [answer.finish for answer in answered]


def score(spec: TaskSpec, result: TaskResult, samples: int = 1000, seed: int = 0) -> dict[str, Interval]:
    """Every metric of the task on the inputs it reads, each with its bootstrap interval over the examples (but those
    no record could be scored on, `TaskResult.unscored`)."""
    return {
        name: bootstrap_ci(get_metric(name), *result.metric_inputs(name), samples=samples, seed=seed)
        for name in spec.metrics
        if name not in result.unscored
    }


def run_task(
    target: Target,
    spec: TaskSpec,
    records: list[Record],
    samples: int = 1000,
    seed: int = 0,
    shots: int = 0,
    scoring: str | None = None,
    pool: list[Record] | None = None,
) -> TaskResult:
    """Score `target` (for a multi-task model: what answers this task) on `records` of task `spec`, or say why it
    cannot be scored. A generating target sees `shots` demonstrations before each prompt, drawn with `seed` from
    `pool` (default the task's train split; `tunelab.eval.fewshot`), and answers a classification task as
    `scoring` says (default the task's own)."""
    target = target.for_task(spec.name)
    result = TaskResult(spec.name, spec.kind, len(records))
    result.skipped = skip_reason(target, spec, shots, records)
    if result.skipped:
        return result
    result.scoring, result.precision = scoring_of(target, spec, scoring), target.precision
    prompts = None
    if result.scoring in ("generate", "loglik"):
        result.shots = shots
        demonstrations = draw_demonstrations(spec, records, shots, seed, pool) if shots else [[]] * len(records)
        room = answer_room(target, spec, result.scoring)
        prompts, result.shown = task_prompts(target, spec, records, demonstrations, room)
    if reads(spec, "reference_nll"):  # first: a task of the wrong kind fails before any answer is generated
        result.reference_nll = reference_nll(target, spec, records)
    if reads(spec, "pair_nll"):
        _score_pairs(target, spec, records, result)
    if reads(spec, "rolling_nll"):
        result.rolling_nll = rolling_nll(target, spec, records)
    result.predictions, result.references, result.outputs, result.finishes = predictions_for(
        target, spec, records, prompts, result.scoring
    )
    result.scores = score(spec, result, samples, seed)
    if spec.handler.head_answers and result.scoring == "generate":
        result.unmatched = unmatched_share(result.predictions)
    return result


def predict_records(target: Target, spec: TaskSpec, records: list[Record]) -> list[dict]:
    """What `target` answers for each record of task `spec`: a reward model's scores (a pair's two, or a prompt's
    one answer's), a classifier's label and label probabilities, or a generator's text (with the kind's reading
    of it under its `answer_key`: the label a classification answer names)."""
    target = target.for_task(spec.name)
    reason = skip_reason(target, spec, records=records)
    if reason:
        raise TargetError(f"cannot predict task {spec.name}: {reason}")
    if target.reward:
        scored = scored_records(target, spec, records, input_limit(target, spec))
        return [{key: round(score, 6) for key, score in scores.items()} for scores in scored]
    if not target.generates:
        return [
            {"prediction": p["label"], "scores": p["scores"]} for p in classifier_predictions(target, spec, records)
        ]
    if not spec.handler.prompted:
        return [{"prediction": output} for output in predictions_for(target, spec, records, scoring=None)[2]]
    outputs = answers(target, spec, records)
    key = spec.handler.answer_key
    if key:
        parsed = spec.handler.parse(spec, outputs, records)
        return [{"prediction": output, key: answer} for output, answer in zip(outputs, parsed)]
    return [{"prediction": output} for output in outputs]
