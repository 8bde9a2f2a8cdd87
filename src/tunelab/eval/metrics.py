"""Task metrics in one registry, each computed by the library the field trusts for it.

Who computes what:

- scikit-learn: accuracy, macro/micro precision, recall and F1, and Matthews
  correlation (MCC) for classification.
- rouge-score: ROUGE-1/2/L/Lsum F-measure, with Porter stemming, for summarisation.
- sacrebleu: corpus BLEU and chrF for translation (its default 13a tokenisation).
- seqeval: entity-level precision, recall and F1 for IOB2-tagged NER
  (conlleval-compatible default mode).
- tunelab (written here): SQuAD exact match and token F1, following the official
  SQuAD v1.1 evaluation script, and perplexity as exp of the token-weighted mean NLL (of a text, or of each
  record's reference answer given its prompt: reference perplexity); beside it, lm-evaluation-harness's
  conventions for a text (its token, word and byte perplexities and bits per byte), so our numbers compare
  with the ones users read in papers; and the stop rate, the share of generated answers that end by themselves
  (a chat model's closing token) before max_new_tokens cuts them; preference accuracy, the share of preference
  pairs whose chosen answer the model finds likelier per token than the rejected one, and the mean length in words
  of the generated answers (a description, not a score: DPO's known drift to longer answers shows in it); a
  reward model's pairwise accuracy (the chosen answer scored above the rejected one) and a judge's win rate
  (one system's answer scored above another's, a tie counting half), each read from pairs of scores.

Every bounded metric is reported on a 0-100 scale (accuracy 87.5, F1 x100, MCC
x100, ROUGE x100, BLEU/chrF as sacrebleu gives them); perplexity and answer length are raw. Each
metric takes (predictions, references) and returns one corpus-level float; `Metric.reads` says which of a
task result's inputs those are.
`Metric.per_example` is set only when the corpus score is exactly the mean of
per-example scores, which lets the bootstrap resample those scores cheaply.
"""

from __future__ import annotations

import difflib
import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal, NamedTuple

import numpy as np
from rouge_score import rouge_scorer
from sklearn.metrics import accuracy_score, matthews_corrcoef, precision_recall_fscore_support

from tunelab.eval import EvaluationError

Reference = str | Sequence[str]
"""One example's reference: a single string or a list of acceptable strings."""

_UNMATCHED = "\0<no label matched>"
"""Stands in for a None prediction so scikit-learn sees strings; never in the label set, so always wrong."""


class MetricError(EvaluationError):
    """An unknown metric name or inputs a metric cannot score."""


@dataclass(frozen=True)
class Metric:
    """A registered metric: how to compute it, and what a reader needs to interpret it."""

    name: str
    compute: Callable[[Sequence, Sequence], float]
    per_example: Callable[[Any, Any], float] | None
    higher_is_better: bool | None
    """None: the metric describes the answers (their length) and neither direction is better, so no report calls
    a change in it a gain or a loss, and no average of scores takes it in."""
    library: str
    description: str
    from_confusion: Callable[[np.ndarray], np.ndarray] | None = None
    """For label metrics: the metric of many confusion matrices at once ([resamples, references, predictions], see
    `confusion_columns`), so a bootstrap counts instead of calling scikit-learn per resample (same values, tested)."""
    reads: Literal["answers", "reference_nll", "pair_nll", "rolling_nll", "finishes"] = "answers"
    """What the metric scores. "answers": the task's predictions (parsed model answers, or a language-modelling
    text's (nll, tokens) pairs) against its references. "reference_nll": the (nll, tokens) pairs of the reference
    answers given their prompts, which no generated answer yields; one task can report both kinds (ROUGE-L of
    its answers beside the perplexity of its references), so each metric names its own inputs. "rolling_nll":
    each text's `TextLikelihood` scored as lm-evaluation-harness scores it (a second pass over the texts, made
    only for a task that lists such a metric). "pair_nll": each preference pair's chosen and rejected answers'
    (nll, tokens) given its prompt. "finishes": how each generated answer ended ('stop' or 'length'), whatever its
    text."""


# --- shared helpers -----------------------------------------------------------------------------


def align(predictions: Sequence, references: Sequence | None) -> tuple[list, list]:
    """Predictions and references as equal-length, non-empty lists.

    A metric of zero examples is undefined and mismatched lengths mean the
    caller zipped the wrong lists, so both fail loudly here rather than as a
    library's obscure error. References may be None for metrics that ignore them
    (perplexity).
    """
    predictions = list(predictions)
    references = [None] * len(predictions) if references is None else list(references)
    if len(predictions) != len(references):
        raise MetricError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise MetricError("no examples to score")
    return predictions, references


def _reference_list(reference: Reference) -> list[str]:
    """A reference as a non-empty list of acceptable strings (a plain string is a list of one)."""
    references = [reference] if isinstance(reference, str) else list(reference)
    if not references:
        raise MetricError("an example has no reference")
    return references


def _mean_of(per_example: Callable[[Any, Any], float]) -> Callable[[Sequence, Sequence], float]:
    """The corpus score of a mean-decomposable metric: the mean of its per-example scores."""

    def compute(predictions: Sequence, references: Sequence) -> float:
        return float(np.mean([per_example(p, r) for p, r in zip(predictions, references)]))

    return compute


# --- classification -----------------------------------------------------------------------------


def _as_labels(predictions: Sequence[str | None]) -> list[str]:
    """Predictions with None (generated text that matched no label) replaced by a never-correct string."""
    return [_UNMATCHED if p is None else p for p in predictions]


def _prf(
    predictions: Sequence[str | None], references: Sequence[str], average: str, labels: Sequence[str] | None = None
) -> tuple[float, float, float]:
    """Precision, recall, F1 (fractions) over the label set: the given one, else the sorted reference labels.

    Restricting to the label set is what keeps None out: an unmatched prediction
    is a false negative for its true class but a false positive for none.
    """
    label_set = list(labels) if labels is not None else sorted(set(references))
    precision, recall, f1, _ = precision_recall_fscore_support(
        references, _as_labels(predictions), labels=label_set, average=average, zero_division=0
    )
    return float(precision), float(recall), float(f1)


def confusion_cells(predictions: Sequence[str | None], references: Sequence[str]) -> tuple[np.ndarray, int, int]:
    """Each example's cell in the confusion matrices `from_confusion` reads (row * columns + column), and their
    shape: rows are the sorted reference labels, columns the same labels first, then every other predicted label
    and the unmatched answer."""
    rows = sorted(set(references))
    columns = rows + sorted(set(_as_labels(predictions)) - set(rows))
    row_of, column_of = {label: i for i, label in enumerate(rows)}, {label: i for i, label in enumerate(columns)}
    cells = [row_of[r] * len(columns) + column_of[p] for r, p in zip(references, _as_labels(predictions))]
    return np.array(cells), len(rows), len(columns)


def _counts(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per resample and reference label: true positives, predictions, references, and whether the label occurs."""
    labels = confusion.shape[1]
    positives = confusion[:, np.arange(labels), np.arange(labels)]
    predicted = confusion[:, :, :labels].sum(axis=1)
    gold = confusion.sum(axis=2)
    return positives, predicted, gold, gold > 0


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    return np.divide(numerator, denominator, out=np.zeros_like(numerator, dtype=float), where=denominator > 0)


def _macro_of(
    per_label: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
) -> Callable[[np.ndarray], np.ndarray]:
    """Mean of a per-label score over the labels a resample's references contain (what `_prf` averages), x100."""

    def from_confusion(confusion: np.ndarray) -> np.ndarray:
        positives, predicted, gold, present = _counts(confusion)
        return 100.0 * (per_label(positives, predicted, gold) * present).sum(axis=1) / present.sum(axis=1)

    return from_confusion


def _micro_of(
    pooled: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
) -> Callable[[np.ndarray], np.ndarray]:
    """A pooled score over the labels a resample's references contain, x100."""

    def from_confusion(confusion: np.ndarray) -> np.ndarray:
        positives, predicted, gold, present = _counts(confusion)
        return 100.0 * pooled(
            *((counts * present).sum(axis=1).astype(float) for counts in (positives, predicted, gold))
        )

    return from_confusion


def _precision(tp, predicted, gold):
    return _ratio(tp, predicted)


def _recall(tp, predicted, gold):
    return _ratio(tp, gold)


def _f1(tp, predicted, gold):
    return _ratio(2.0 * tp, predicted + gold)


def _mcc_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """Matthews correlation of each confusion matrix, x100, over every label seen (unmatched answers included)."""
    labels = confusion.shape[1]
    true = np.pad(confusion.sum(axis=2), ((0, 0), (0, confusion.shape[2] - labels))).astype(float)
    predicted = confusion.sum(axis=1).astype(float)
    correct = confusion[:, np.arange(labels), np.arange(labels)].sum(axis=1).astype(float)
    total = true.sum(axis=1)
    covariance = correct * total - (true * predicted).sum(axis=1)
    spread = (total**2 - (predicted**2).sum(axis=1)) * (total**2 - (true**2).sum(axis=1))
    return 100.0 * _ratio(covariance, np.sqrt(spread))


def label_correct(prediction: str | None, reference: str) -> float:
    """100 when the predicted label is the reference label, else 0 (None is always wrong)."""
    return 100.0 if prediction is not None and prediction == reference else 0.0


def accuracy(predictions: Sequence[str | None], references: Sequence[str]) -> float:
    """Share of examples whose label is right, x100: the headline classification number."""
    return 100.0 * float(accuracy_score(references, _as_labels(predictions)))


def precision_macro(predictions: Sequence[str | None], references: Sequence[str]) -> float:
    """Unweighted mean of per-class precision, x100: every class counts the same, however rare."""
    return 100.0 * _prf(predictions, references, "macro")[0]


def recall_macro(predictions: Sequence[str | None], references: Sequence[str]) -> float:
    """Unweighted mean of per-class recall, x100."""
    return 100.0 * _prf(predictions, references, "macro")[1]


def f1_macro(predictions: Sequence[str | None], references: Sequence[str]) -> float:
    """Unweighted mean of per-class F1, x100: the usual number for imbalanced label sets."""
    return 100.0 * _prf(predictions, references, "macro")[2]


def precision_micro(predictions: Sequence[str | None], references: Sequence[str]) -> float:
    """Pooled precision, x100; below accuracy when some predictions matched no label."""
    return 100.0 * _prf(predictions, references, "micro")[0]


def recall_micro(predictions: Sequence[str | None], references: Sequence[str]) -> float:
    """Pooled recall, x100; equals accuracy, since every reference is in the label set."""
    return 100.0 * _prf(predictions, references, "micro")[1]


def f1_micro(predictions: Sequence[str | None], references: Sequence[str]) -> float:
    """Pooled F1, x100."""
    return 100.0 * _prf(predictions, references, "micro")[2]


def mcc(predictions: Sequence[str | None], references: Sequence[str]) -> float:
    """Matthews correlation, x100: chance-corrected, so a majority-class guesser scores 0.

    A None prediction lands in its own column of the confusion matrix (it is
    wrong for every true class) but, never being a reference, adds no row.
    """
    return 100.0 * float(matthews_corrcoef(references, _as_labels(predictions)))


# --- summarisation (ROUGE) ----------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@cache
def _rouge_scorer(kind: str) -> rouge_scorer.RougeScorer:
    """One stemming scorer per ROUGE type, built once (the stemmer set-up is not free)."""
    return rouge_scorer.RougeScorer([kind], use_stemmer=True)


def _sentence_lines(text: str) -> str:
    """Sentences one per line, as rougeLsum expects; a regex split, since nltk's punkt data is not offline."""
    return "\n".join(s for s in _SENTENCE_END.split(text.strip()) if s)


def _rouge(kind: str, prediction: str, reference: Reference) -> float:
    """ROUGE F-measure x100 against the best-matching reference."""
    targets = _reference_list(reference)
    if kind == "rougeLsum":
        prediction, targets = _sentence_lines(prediction), [_sentence_lines(t) for t in targets]
    return 100.0 * _rouge_scorer(kind).score_multi(targets, prediction)[kind].fmeasure


def rouge1(prediction: str, reference: Reference) -> float:
    """ROUGE-1 F-measure x100: stemmed unigram overlap, how much of the content is there."""
    return _rouge("rouge1", prediction, reference)


def rouge2(prediction: str, reference: Reference) -> float:
    """ROUGE-2 F-measure x100: stemmed bigram overlap, a first check on fluency."""
    return _rouge("rouge2", prediction, reference)


def rougeL(prediction: str, reference: Reference) -> float:
    """ROUGE-L F-measure x100: longest common subsequence over the whole text."""
    return _rouge("rougeL", prediction, reference)


def rougeLsum(prediction: str, reference: Reference) -> float:
    """ROUGE-Lsum F-measure x100: union LCS per sentence, the variant summarisation papers report."""
    return _rouge("rougeLsum", prediction, reference)


# --- translation (sacrebleu) --------------------------------------------------------------------


def _reference_streams(references: Sequence[Reference]) -> list[list[str | None]]:
    """Per-example references regrouped into sacrebleu's reference streams.

    sacrebleu wants one list per reference position, each as long as the
    corpus. An example with fewer references is padded with None, which
    sacrebleu drops per segment; an empty string would instead count as a real,
    empty reference and distort BLEU's closest-length brevity penalty.
    """
    per_example = [_reference_list(r) for r in references]
    width = max(len(r) for r in per_example)
    return [[r[i] if i < len(r) else None for r in per_example] for i in range(width)]


def bleu(predictions: Sequence[str], references: Sequence[Reference]) -> float:
    """Corpus BLEU (sacrebleu defaults): n-gram precision pooled over the corpus, so not a per-example mean."""
    import sacrebleu  # imported where used: only translation tasks need it

    return float(sacrebleu.corpus_bleu(list(predictions), _reference_streams(references)).score)


def chrf(predictions: Sequence[str], references: Sequence[Reference]) -> float:
    """Corpus chrF (sacrebleu defaults): character n-gram F-score, kinder than BLEU to morphology."""
    import sacrebleu  # imported where used: only translation tasks need it

    return float(sacrebleu.corpus_chrf(list(predictions), _reference_streams(references)).score)


# --- extractive QA (SQuAD v1.1) -----------------------------------------------------------------


def normalise_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lower case, no punctuation, no articles, single spaces.

    Answers that differ only in these ways are the same answer to a reader, so
    the official script ignores the differences; so do we, in the same order.
    """
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _token_f1(prediction: str, reference: str) -> float:
    """Token-overlap F1 (fraction) of normalised answers, exactly as the v1.1 script (no empty-answer case)."""
    predicted, gold = normalise_answer(prediction).split(), normalise_answer(reference).split()
    common = sum((Counter(predicted) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, reference: Reference) -> float:
    """100 when the normalised prediction equals any normalised acceptable answer, else 0."""
    return 100.0 * max(normalise_answer(prediction) == normalise_answer(r) for r in _reference_list(reference))


def squad_f1(prediction: str, reference: Reference) -> float:
    """Best token F1 x100 over the acceptable answers: partial credit for a partly right span."""
    return 100.0 * max(_token_f1(prediction, r) for r in _reference_list(reference))


# --- NER (seqeval) ------------------------------------------------------------------------------


def _entity_scores(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> tuple[float, ...]:
    """seqeval's entity-level micro precision, recall, F1 (fractions): an entity counts only if span and type match."""
    from seqeval.metrics import f1_score, precision_score, recall_score  # imported where used: only NER needs it

    gold, predicted = [list(tags) for tags in references], [list(tags) for tags in predictions]
    return tuple(float(fn(gold, predicted, zero_division=0)) for fn in (precision_score, recall_score, f1_score))


def entity_precision(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> float:
    """Share of predicted entities that are right (span and type), x100."""
    return 100.0 * _entity_scores(predictions, references)[0]


def entity_recall(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> float:
    """Share of gold entities found (span and type), x100."""
    return 100.0 * _entity_scores(predictions, references)[1]


def entity_f1(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> float:
    """Entity-level F1, x100: the CoNLL headline number."""
    return 100.0 * _entity_scores(predictions, references)[2]


# --- language modelling -------------------------------------------------------------------------


def perplexity(predictions: Sequence[tuple[float, int]], references: Sequence | None = None) -> float:
    """exp(total NLL / total tokens) over (nll_sum, token_count) pairs; references are ignored.

    Weighting by tokens (not averaging per-example perplexities) is what makes
    it the perplexity of the corpus as one text; hence no per-example form.
    """
    total_nll = sum(float(nll) for nll, _ in predictions)
    total_tokens = sum(int(count) for _, count in predictions)
    if total_tokens <= 0:
        raise MetricError("perplexity needs at least one token")
    return math.exp(total_nll / total_tokens)


class TextLikelihood(NamedTuple):
    """One text scored as lm-evaluation-harness's `loglikelihood_rolling` scores it: the summed NLL of every token
    (the first one given only the prefix token), and the units lm-eval divides it by."""

    nll: float
    tokens: int
    words: int
    """Whitespace-separated pieces, `len(re.split(r"\\s+", text))`, as lm-eval counts them."""
    bytes: int
    """UTF-8 bytes of the text."""


def _nll_per(predictions: Sequence[TextLikelihood], unit: Literal["tokens", "words", "bytes"]) -> float:
    """Total NLL over the total count of `unit`: the corpus as one text, as lm-eval's `weighted_perplexity` and
    `bits_per_byte` aggregate (sums first), so it is not a mean of per-text scores."""
    total = sum(getattr(text, unit) for text in predictions)
    if total <= 0:
        raise MetricError(f"a perplexity per {unit[:-1]} needs at least one {unit[:-1]}")
    return sum(text.nll for text in predictions) / total


def lm_eval_perplexity(predictions: Sequence[TextLikelihood], references: Sequence | None = None) -> float:
    """exp(NLL per token) with every token of each text predicted after lm-eval's prefix token: lm-eval's token
    perplexity. Usually above `perplexity`, which never scores a text's first token, the hardest to guess."""
    return math.exp(_nll_per(predictions, "tokens"))


def word_perplexity(predictions: Sequence[TextLikelihood], references: Sequence | None = None) -> float:
    """exp(NLL per word), lm-eval's `word_perplexity`: independent of the tokenizer, so models compare."""
    return math.exp(_nll_per(predictions, "words"))


def byte_perplexity(predictions: Sequence[TextLikelihood], references: Sequence | None = None) -> float:
    """exp(NLL per UTF-8 byte), lm-eval's `byte_perplexity`."""
    return math.exp(_nll_per(predictions, "bytes"))


def bits_per_byte(predictions: Sequence[TextLikelihood], references: Sequence | None = None) -> float:
    """NLL per UTF-8 byte in bits, lm-eval's `bits_per_byte`: the compression view, log2 of `byte_perplexity`."""
    return _nll_per(predictions, "bytes") / math.log(2)


# --- generation ---------------------------------------------------------------------------------


def stopped(finish: str, reference: None = None) -> float:
    """100 when a generated answer ended by itself (EOS: a chat model's closing token, or a stop string) within
    max_new_tokens, 0 when the budget cut it: `stop_rate` is their mean, a tuned model that never learned its
    closing token scoring near 0."""
    return 100.0 if finish == "stop" else 0.0


# --- pairs of scores ---------------------------------------------------------------------------


def pairwise_accuracy(scores: tuple[float, float], reference: None = None) -> float:
    """One pair's: 100 when its first score (a reward model's score of the chosen answer) is above its second (the
    rejected answer's), else 0, a tie counting as a miss; the metric is the mean over pairs."""
    return 100.0 if scores[0] > scores[1] else 0.0


def win_rate(scores: tuple[float, float], reference: None = None) -> float:
    """One prompt's: 100 when its first score (a judge's score of one system's answer) is above its second (the
    other system's), 50 on a tie, 0 below; the metric is the mean over prompts."""
    return 100.0 if scores[0] > scores[1] else 50.0 if scores[0] == scores[1] else 0.0


def words(prediction: str, reference: Any = None) -> float:
    """A generated answer's length in whitespace-separated words (the unit a reader counts, whatever the tokenizer):
    `answer_words` is their mean."""
    return float(len(prediction.split()))


AnswerLikelihood = tuple[float, int]
"""An answer's summed NLL given its prompt and its token count."""


def chosen_preferred(pair: tuple[AnswerLikelihood, AnswerLikelihood], reference: None = None) -> float:
    """100 when the chosen answer's mean log-likelihood per token is above the rejected one's, else 0 (a tie
    included, as TRL's rewards/accuracies counts it). Per token, so the longer answer is not the less likely one only
    for being longer."""
    (chosen_nll, chosen_tokens), (rejected_nll, rejected_tokens) = pair
    if chosen_tokens < 1 or rejected_tokens < 1:
        raise MetricError("preference_accuracy needs at least one token in each answer")
    return 100.0 if chosen_nll / chosen_tokens < rejected_nll / rejected_tokens else 0.0


# --- registry -----------------------------------------------------------------------------------


def _classification(name: str, compute: Callable, description: str, from_confusion: Callable) -> Metric:
    """A scikit-learn label metric; not a per-example mean (except accuracy, registered by hand)."""
    return Metric(name, compute, None, True, "scikit-learn", description, from_confusion)


def _mean_metric(per_example: Callable[[Any, Any], float], library: str, description: str) -> Metric:
    """A metric whose corpus score is the mean of `per_example`, named after that function."""
    return Metric(per_example.__name__, _mean_of(per_example), per_example, True, library, description)


def _rolling(compute: Callable[[Sequence, Sequence], float], description: str) -> Metric:
    """A lower-is-better metric of lm-eval's rolling likelihoods, named after `compute`; a corpus ratio of sums,
    so it has no per-example form and the bootstrap recomputes it per resample."""
    return Metric(compute.__name__, compute, None, False, "tunelab", description, reads="rolling_nll")


METRICS: dict[str, Metric] = {
    metric.name: metric
    for metric in (
        Metric("accuracy", accuracy, label_correct, True, "scikit-learn", "share of correct labels"),
        _classification("precision_macro", precision_macro, "mean per-class precision", _macro_of(_precision)),
        _classification("recall_macro", recall_macro, "mean per-class recall", _macro_of(_recall)),
        _classification("f1_macro", f1_macro, "mean per-class F1", _macro_of(_f1)),
        _classification("precision_micro", precision_micro, "pooled precision", _micro_of(_precision)),
        _classification("recall_micro", recall_micro, "pooled recall", _micro_of(_recall)),
        _classification("f1_micro", f1_micro, "pooled F1", _micro_of(_f1)),
        _classification("mcc", mcc, "Matthews correlation coefficient", _mcc_from_confusion),
        _mean_metric(rouge1, "rouge-score", "stemmed unigram-overlap F-measure"),
        _mean_metric(rouge2, "rouge-score", "stemmed bigram-overlap F-measure"),
        _mean_metric(rougeL, "rouge-score", "longest-common-subsequence F-measure"),
        _mean_metric(rougeLsum, "rouge-score", "summary-level (per-sentence union) LCS F-measure"),
        Metric("bleu", bleu, None, True, "sacrebleu", "corpus BLEU"),
        Metric("chrf", chrf, None, True, "sacrebleu", "corpus character n-gram F-score"),
        _mean_metric(exact_match, "tunelab", "SQuAD v1.1 normalised exact match"),
        _mean_metric(squad_f1, "tunelab", "SQuAD v1.1 token F1"),
        Metric("entity_precision", entity_precision, None, True, "seqeval", "entity-level precision"),
        Metric("entity_recall", entity_recall, None, True, "seqeval", "entity-level recall"),
        Metric("entity_f1", entity_f1, None, True, "seqeval", "entity-level F1"),
        Metric("perplexity", perplexity, None, False, "tunelab", "exp of token-weighted mean NLL of tokens 2..n"),
        Metric(
            "reference_perplexity",
            perplexity,
            None,
            False,
            "tunelab",
            "exp of token-weighted mean NLL of the reference answers given their prompts",
            reads="reference_nll",
        ),
        Metric(
            "stop_rate",
            _mean_of(stopped),
            stopped,
            True,
            "tunelab",
            "share of generated answers ended by EOS (a chat template's closing token) within max_new_tokens",
            reads="finishes",
        ),
        _mean_metric(
            pairwise_accuracy, "tunelab", "share of pairs whose chosen answer a reward model scores above the other"
        ),
        _mean_metric(win_rate, "tunelab", "share of prompts whose first answer a judge scores higher, ties half"),
        Metric(
            "preference_accuracy",
            _mean_of(chosen_preferred),
            chosen_preferred,
            True,
            "tunelab",
            "share of preference pairs whose chosen answer has the higher per-token log-likelihood given the prompt",
            reads="pair_nll",
        ),
        Metric(
            "answer_words",
            _mean_of(words),
            words,
            None,
            "tunelab",
            "mean length of the generated answers in words (descriptive: neither longer nor shorter is better)",
        ),
        _rolling(lm_eval_perplexity, "lm-eval's token perplexity: every token scored, the first after a prefix token"),
        _rolling(word_perplexity, "lm-eval's word perplexity: exp of NLL per whitespace-separated word"),
        _rolling(byte_perplexity, "lm-eval's byte perplexity: exp of NLL per UTF-8 byte"),
        _rolling(bits_per_byte, "lm-eval's bits per byte: NLL per UTF-8 byte in bits"),
    )
}


def get_metric(name: str) -> Metric:
    """The registered metric called `name`; a typo gets the known names and the closest one."""
    if name in METRICS:
        return METRICS[name]
    by_lower = {known.lower(): known for known in METRICS}
    close = [by_lower[m] for m in difflib.get_close_matches(name.lower(), list(by_lower), n=1)]
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise MetricError(f"Unknown metric {name!r}.{hint} Known metrics: {', '.join(sorted(METRICS))}")


def score(name: str, predictions: Sequence, references: Sequence | None) -> float:
    """The corpus score of metric `name` on aligned predictions and references."""
    predictions, references = align(predictions, references)
    return get_metric(name).compute(predictions, references)


# --- generative classification ------------------------------------------------------------------


def unmatched_share(predictions: Sequence[str | None]) -> float:
    """Share (0-100) of generated answers that matched no label: a high value means the metric measures format, not skill."""
    predictions = list(predictions)
    return 100.0 * sum(p is None for p in predictions) / len(predictions) if predictions else 0.0
