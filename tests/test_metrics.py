"""Every registered metric against hand-computed values, label matching, and the bootstrap."""

from __future__ import annotations

import dataclasses
import math

import pytest

from tunelab.eval.bootstrap import Interval, bootstrap_ci, paired_bootstrap
from tunelab.eval.metrics import METRICS, MetricError, TextLikelihood, get_metric, score, unmatched_share
from tunelab.kinds import KINDS
from tunelab.kinds.classification import match_label

# --- classification ------------------------------------------------------------------------------

GOLD = ["cat", "cat", "dog", "dog"]
PREDICTED = ["cat", "dog", "dog", None]  # None: generated text that matched no label


def test_accuracy_three_of_four():
    # 3 of 4 right -> 75.0
    assert score("accuracy", ["a", "b", "b", "b"], ["a", "b", "b", "a"]) == pytest.approx(75.0)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # 2 of 4 right (the None is wrong) -> 50
        ("accuracy", 50.0),
        # cat: TP 1, FP 0, FN 1 -> P 1, R 1/2, F1 2/3
        # dog: TP 1, FP 1 (the cat called dog), FN 1 (the None) -> P 1/2, R 1/2, F1 1/2
        # None is no class: it is a false negative for dog and a false positive for nothing
        ("precision_macro", 100 * (1 + 1 / 2) / 2),  # 75
        ("recall_macro", 100 * (1 / 2 + 1 / 2) / 2),  # 50
        ("f1_macro", 100 * (2 / 3 + 1 / 2) / 2),  # 58.33
        # pooled: TP 2, FP 1, FN 2 -> P 2/3, R 2/4, F1 = 2 * (2/3 * 1/2) / (2/3 + 1/2) = 4/7
        ("precision_micro", 100 * 2 / 3),
        ("recall_micro", 100 * 2 / 4),
        ("f1_micro", 100 * 4 / 7),
        # confusion matrix (rows true cat/dog, columns predicted cat/dog/None): [[1, 1, 0], [0, 1, 1]]
        # s = 4 samples, c = 2 correct, predicted counts p = (1, 2, 1), true counts t = (2, 2, 0)
        # MCC = (c*s - sum p*t) / sqrt((s^2 - sum p^2) (s^2 - sum t^2)) = (8 - 6) / sqrt((16 - 6) (16 - 8))
        ("mcc", 100 * 2 / math.sqrt(10 * 8)),
    ],
)
def test_classification_metrics_with_an_unmatched_prediction(name, expected):
    assert score(name, PREDICTED, GOLD) == pytest.approx(expected)


def test_mcc_binary_from_the_confusion_matrix():
    # positive "a": TP 1, FN 1, FP 0, TN 2 -> (1*2 - 0*1) / sqrt((1+0)(1+1)(2+0)(2+1)) = 2 / sqrt(12)
    assert score("mcc", ["a", "b", "b", "b"], ["a", "a", "b", "b"]) == pytest.approx(100 * 2 / math.sqrt(12))


def test_a_data_classification_task_is_scored_on_the_registry_scale():
    # a run's own classification data gets accuracy and the macro averages, 0-100 like every other score
    scores = {
        name: score(name, ["cat", "dog", "dog"], ["cat", "dog", "cat"])
        for name in KINDS["classification"].inline_metrics
    }
    assert scores["accuracy"] == pytest.approx(200 / 3)
    assert scores["precision_macro"] == pytest.approx(75.0)  # cat 1/1, dog 1/2
    assert scores["recall_macro"] == pytest.approx(75.0)  # cat 1/2, dog 1/1
    assert list(scores) == ["accuracy", "f1_macro", "precision_macro", "recall_macro"]


# --- ROUGE ---------------------------------------------------------------------------------------


def test_rouge_from_unigram_and_bigram_overlap():
    prediction, reference = "the cat sat", "the cat ran away"
    # unigrams: 2 shared (the, cat) of 3 predicted and 4 reference -> P 2/3, R 1/2, F 2PR/(P+R) = 4/7
    assert score("rouge1", [prediction], [reference]) == pytest.approx(100 * 4 / 7)
    # bigrams: 1 shared (the cat) of 2 and 3 -> P 1/2, R 1/3, F = (1/3) / (5/6) = 2/5
    assert score("rouge2", [prediction], [reference]) == pytest.approx(40.0)
    # LCS "the cat" = 2 -> same as ROUGE-1 here
    assert score("rougeL", [prediction], [reference]) == pytest.approx(100 * 4 / 7)


def test_rouge_stems():
    # Porter stemming: cats -> cat, running -> run, so every unigram matches
    assert score("rouge1", ["cats running"], ["cat run"]) == pytest.approx(100.0)


def test_rouge_lsum_scores_sentences_but_rouge_l_the_whole_text():
    prediction, reference = "the dog ran. the cat sat.", "the cat sat. the dog ran."
    # whole-text LCS of "the dog ran the cat sat" and "the cat sat the dog ran" is 3 of 6 -> 50
    assert score("rougeL", [prediction], [reference]) == pytest.approx(50.0)
    # per reference sentence, the union LCS with the predicted sentences covers all 3 tokens -> 6 of 6
    assert score("rougeLsum", [prediction], [reference]) == pytest.approx(100.0)


def test_rouge_takes_the_best_reference_and_averages_examples():
    # example 1: second reference is identical -> 100; example 2: 4/7 as above -> mean (100 + 400/7) / 2
    predictions, references = ["a cat sat", "the cat sat"], [["dogs bark", "a cat sat"], "the cat ran away"]
    assert score("rouge1", predictions, references) == pytest.approx((100 + 400 / 7) / 2)


# --- BLEU and chrF -------------------------------------------------------------------------------


def test_bleu_identical_is_100():
    assert score("bleu", ["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)


def test_bleu_brevity_penalty():
    # every n-gram precision is 1; hypothesis 6 tokens, reference 7 -> BP = exp(1 - 7/6)
    assert score("bleu", ["the cat sat on the mat"], ["the cat sat on the mat today"]) == pytest.approx(
        100 * math.exp(1 - 7 / 6)
    )


def test_bleu_with_a_variable_number_of_references():
    predictions = ["the cat sat on the mat", "hello"]
    references = [["the cat sat on the mat", "a cat on a mat"], "hello there friend"]
    # precisions all 1 (4-grams: 3/3 from the first sentence); closest reference lengths 6 and 3 -> r = 9, c = 7
    # BP = exp(1 - 9/7). The missing second reference of example 2 must be dropped, not read as "" (length 0,
    # which would be the closest length to "hello" and remove the penalty).
    assert score("bleu", predictions, references) == pytest.approx(100 * math.exp(1 - 9 / 7))


def test_chrf_bounds():
    assert score("chrf", ["the cat sat"], ["the cat sat"]) == pytest.approx(100.0)
    assert score("chrf", ["xyz"], ["abc"]) == pytest.approx(0.0)
    assert score("chrf", ["the cat sat"], [["abc", "the cat sat"]]) == pytest.approx(100.0)


# --- SQuAD ---------------------------------------------------------------------------------------


def test_exact_match_ignores_case_articles_and_punctuation_and_takes_the_best_reference():
    # "The Eiffel Tower!" -> "eiffel tower" matches the second reference; "Paris" matches nothing -> (100 + 0) / 2
    predictions, references = ["The Eiffel Tower!", "Paris"], [["Paris", "an eiffel tower"], ["Lyon"]]
    assert score("exact_match", predictions, references) == pytest.approx(50.0)


def test_squad_f1_token_overlap():
    # "the big red dog" -> [big, red, dog]; "a red dog." -> [red, dog]: 2 shared, P 2/3, R 1 -> F1 0.8
    assert score("squad_f1", ["the big red dog"], ["a red dog."]) == pytest.approx(80.0)
    # max over references: [cat] scores 0, [big, red, dog] scores 1
    assert score("squad_f1", ["the big red dog"], [["cat", "Big red dog"]]) == pytest.approx(100.0)


# --- NER -----------------------------------------------------------------------------------------


def test_entities_one_right_one_wrong():
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    # PER span right; LOC predicted as ORG -> wrong: 1 of 2 predicted right, 1 of 2 gold found
    wrong_type = [["B-PER", "I-PER", "O", "B-ORG"]]
    assert [score(m, wrong_type, gold) for m in ("entity_precision", "entity_recall", "entity_f1")] == pytest.approx(
        [50.0, 50.0, 50.0]
    )
    # LOC missed: P 1/1, R 1/2, F1 2/3
    missed = [["B-PER", "I-PER", "O", "O"]]
    assert [score(m, missed, gold) for m in ("entity_precision", "entity_recall", "entity_f1")] == pytest.approx(
        [100.0, 50.0, 200 / 3]
    )


# --- perplexity ----------------------------------------------------------------------------------


def test_perplexity_weights_by_tokens():
    # (2.0 + 4.0) / (2 + 2) = 1.5 nats per token
    assert score("perplexity", [(2.0, 2), (4.0, 2)], None) == pytest.approx(math.exp(1.5))
    assert not get_metric("perplexity").higher_is_better


LM_EVAL_TEXTS = [
    TextLikelihood(nll=2.0, tokens=2, words=1, bytes=4),
    TextLikelihood(nll=4.0, tokens=6, words=3, bytes=8),
]


def test_lm_eval_metrics_divide_the_total_nll_by_total_tokens_words_or_bytes():
    # 6 nats over 8 tokens, 4 words, 12 bytes: sums first, as lm-eval's weighted_perplexity, not a mean of texts
    assert score("lm_eval_perplexity", LM_EVAL_TEXTS, None) == pytest.approx(math.exp(6 / 8))
    assert score("word_perplexity", LM_EVAL_TEXTS, None) == pytest.approx(math.exp(6 / 4))
    assert score("byte_perplexity", LM_EVAL_TEXTS, None) == pytest.approx(math.exp(6 / 12))
    assert score("bits_per_byte", LM_EVAL_TEXTS, None) == pytest.approx(6 / 12 / math.log(2))
    for name in ("lm_eval_perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte"):
        metric = get_metric(name)
        assert metric.reads == "rolling_nll" and not metric.higher_is_better and metric.per_example is None


def test_lm_eval_metrics_bootstrap_over_texts():
    texts = [TextLikelihood(float(i), 5, 3, 20) for i in range(1, 21)]
    interval = bootstrap_ci(get_metric("word_perplexity"), texts, None, samples=200)
    assert interval.value == pytest.approx(math.exp(sum(range(1, 21)) / 60))
    assert interval.low < interval.value < interval.high


def test_lm_eval_metrics_need_a_unit_to_divide_by():
    with pytest.raises(MetricError, match="at least one byte"):
        score("bits_per_byte", [TextLikelihood(0.0, 0, 1, 0)], None)


# --- registry ------------------------------------------------------------------------------------


def test_registry_describes_every_metric():
    libraries = {"scikit-learn", "rouge-score", "sacrebleu", "seqeval", "tunelab"}
    for name, metric in METRICS.items():
        assert metric.name == name and metric.library in libraries and metric.description
    with_fast_path = {name for name, metric in METRICS.items() if metric.per_example is not None}
    assert with_fast_path == {
        "accuracy",
        "rouge1",
        "rouge2",
        "rougeL",
        "rougeLsum",
        "exact_match",
        "squad_f1",
        "stop_rate",
        "pairwise_accuracy",
        "win_rate",
        "preference_accuracy",
        "answer_words",
    }


def test_unknown_metric_lists_names_and_suggests_one():
    with pytest.raises(MetricError) as caught:
        get_metric("acuracy")
    assert "Did you mean 'accuracy'" in str(caught.value)
    assert all(name in str(caught.value) for name in METRICS)
    assert isinstance(caught.value, ValueError)


def test_mismatched_or_empty_inputs_are_refused():
    with pytest.raises(MetricError, match="2 predictions but 1 references"):
        score("accuracy", ["a", "b"], ["a"])
    with pytest.raises(MetricError, match="no examples"):
        score("bleu", [], [])


def test_a_data_generation_task_keeps_the_scores_runs_always_had():
    metrics = {name: score(name, ["The cat sat"], ["the cat ran away"]) for name in KINDS["generation"].inline_metrics}
    assert metrics == pytest.approx({"rouge1": 400 / 7, "rouge2": 40.0, "rougeL": 400 / 7, "exact_match": 0.0})


# --- generative classification -------------------------------------------------------------------

NLI = {"entailment": ["entailment", "yes"], "not_entailment": ["not entailment", "no"]}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("entailment", "entailment"),
        ("Not entailment.", "not_entailment"),  # the longer word wins at the start
        ("  Yes! It follows.", "entailment"),  # punctuation around the ends
        ("It is not entailment.", "not_entailment"),  # only one label mentioned once "not entailment" is taken out
        ("I think yes", "entailment"),
        ("noted", None),  # "no" only as a whole word
        ("The weather is nice.", None),
        ("Either yes or no.", None),  # two labels, neither at the start
    ],
)
def test_match_label(text, expected):
    assert match_label(text, NLI) == expected


def test_unmatched_share():
    assert unmatched_share(["a", None, "b", None]) == pytest.approx(50.0)
    assert unmatched_share([]) == 0.0


# --- bootstrap -----------------------------------------------------------------------------------

ACCURACY = get_metric("accuracy")
SLOW_ACCURACY = dataclasses.replace(ACCURACY, per_example=None)


def _labels(n: int, right_every: int = 10, right: int = 7) -> tuple[list[str], list[str]]:
    """n examples, `right` of every `right_every` correct."""
    gold = ["a"] * n
    return ["a" if i % right_every < right else "b" for i in range(n)], gold


def test_bootstrap_is_deterministic_and_contains_the_value():
    predictions, gold = _labels(50)
    first = bootstrap_ci(ACCURACY, predictions, gold, samples=500, seed=3)
    assert first == bootstrap_ci(ACCURACY, predictions, gold, samples=500, seed=3)
    assert first != bootstrap_ci(ACCURACY, predictions, gold, samples=500, seed=4)
    assert first.value == pytest.approx(70.0)
    assert first.low < first.value < first.high
    assert first.as_dict() == {"value": first.value, "low": first.low, "high": first.high}


def test_bootstrap_narrows_with_more_data():
    small = bootstrap_ci(ACCURACY, *_labels(20), samples=500)
    large = bootstrap_ci(ACCURACY, *_labels(2000), samples=500)
    assert large.high - large.low < (small.high - small.low) / 3


def test_fast_path_agrees_with_recomputing_the_metric():
    # both paths draw the same indices, so they agree up to float rounding, well inside sampling noise
    predictions, gold = _labels(40)
    fast = bootstrap_ci(ACCURACY, predictions, gold, samples=300, seed=1)
    slow = bootstrap_ci(SLOW_ACCURACY, predictions, gold, samples=300, seed=1)
    assert [fast.value, fast.low, fast.high] == pytest.approx([slow.value, slow.low, slow.high], abs=1e-9)


def test_corpus_metric_bootstrap():
    predictions = ["the cat sat on the mat", "a dog barked", "it rained all day", "we went home"]
    references = ["the cat sat on the mat", "the dog barked loudly", "it rained all day long", "they went home"]
    interval = bootstrap_ci(get_metric("bleu"), predictions, references, samples=100)
    assert 0.0 <= interval.low <= interval.high <= 100.0
    assert interval.value == pytest.approx(score("bleu", predictions, references))


def test_paired_bootstrap_of_identical_systems_is_zero():
    predictions, gold = _labels(30)
    for metric in (ACCURACY, SLOW_ACCURACY, get_metric("f1_macro")):
        assert paired_bootstrap(metric, predictions, predictions, gold, samples=200) == Interval(0.0, 0.0, 0.0)


def test_paired_bootstrap_sees_a_clear_improvement():
    worse, gold = _labels(100, right=5)
    better, _ = _labels(100, right=9)
    fast = paired_bootstrap(ACCURACY, worse, better, gold, samples=300)
    slow = paired_bootstrap(SLOW_ACCURACY, worse, better, gold, samples=300)
    assert fast.value == pytest.approx(40.0) and fast.low > 0
    assert [fast.low, fast.high] == pytest.approx([slow.low, slow.high], abs=1e-9)


def test_bootstrap_edge_sizes():
    with pytest.raises(ValueError, match="no examples"):
        bootstrap_ci(ACCURACY, [], [])
    assert bootstrap_ci(get_metric("bleu"), ["a b c d"], ["a b c d"]) == Interval(*[pytest.approx(100.0)] * 3)
    assert paired_bootstrap(ACCURACY, ["a"], ["b"], ["b"]) == Interval(100.0, 100.0, 100.0)


def test_paired_bootstrap_scores_each_system_against_its_own_references():
    metric = get_metric("exact_match")
    # a: 2 of 2 right against its references (100); b: 1 of 2 right against its own (50) -> b - a = -50
    change = paired_bootstrap(
        metric, ["paris", "rome"], ["he", "she"], ["paris", "rome"], samples=200, references_b=["he", "her"]
    )
    assert change.value == pytest.approx(-50.0)
    assert change.low <= -50.0 <= change.high
    same = paired_bootstrap(
        metric, ["he", "she"], ["he", "she"], ["he", "her"], samples=200, references_b=["he", "her"]
    )
    assert same == Interval(0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    "name", ["precision_macro", "recall_macro", "f1_macro", "precision_micro", "recall_micro", "f1_micro", "mcc"]
)
@pytest.mark.parametrize("seed", range(4))
def test_counted_label_metrics_equal_scikit_learn_on_every_resample(name, seed):
    """The bootstrap's confusion-count path gives scikit-learn's value on each resample, unmatched answers and
    labels absent from a resample included."""
    import numpy as np

    from tunelab.eval.bootstrap import _index_batches, _picked, _resample_confusions

    rng = np.random.default_rng(seed)
    labels = ["a", "b", "c"]
    references = [labels[i] for i in rng.integers(0, 3, 40)]
    predictions = [None if r < 0.1 else labels[int(r * 10) % 3] if r < 0.9 else "zz" for r in rng.random(40)]
    metric = get_metric(name)
    counted = _resample_confusions(metric, predictions, references, samples=60, seed=seed)
    direct = [
        metric.compute(_picked(predictions, idx), _picked(references, idx))
        for batch in _index_batches(40, 60, seed)
        for idx in batch
    ]
    assert counted == pytest.approx(direct, abs=1e-9)
