"""Task files, batched generation, suites, forgetting, robustness and bias reports, on tiny models and the
real datasets in ../shared/data (read in place)."""

from __future__ import annotations

import json
import string

import pytest
import torch

from tunelab import pipeline
from tunelab.cli import main
from tunelab.config import DataConfig, RunConfig
from tunelab.data.task_records import load_records
from tunelab.eval.bias import bias_report, counterfactual_records, mentioning
from tunelab.eval.counterfactual import mentions
from tunelab.eval.forgetting import _task_row, forgetting_report
from tunelab.eval.generate import cut_at_stop, generate_texts, pad_batch
from tunelab.eval.predict import classify
from tunelab.eval.robustness import perturbed_records, robustness_report
from tunelab.eval.runner import _text_nll, run_task
from tunelab.eval.suites import run_suite
from tunelab.eval.targets import Target, load_target
from tunelab.kinds.tagging import format_entities, parse_entities
from tunelab.records import Record
from tunelab.render import template_fields
from tunelab.tasks import TaskError, builtin_tasks, load_task
from tunelab.tasks.suite import Suite, load_suite

from helpers import classification_config, cli, copied_run, generation_config, scored_result


@pytest.fixture(scope="module")
def decoder_target(tiny_decoder) -> Target:
    return load_target(tiny_decoder, batch_size=4)


@pytest.fixture(scope="module")
def classifier_run(tiny_encoder, tmp_path_factory):
    """A tiny sentiment classifier with SST-2's labels, trained on a separable set."""
    import random

    from helpers import NEGATIVE, NOUNS, POSITIVE, write_jsonl

    folder = tmp_path_factory.mktemp("cls")
    rng = random.Random(0)
    rows = [
        {
            "text": f"the {rng.choice(NOUNS)} was {rng.choice(POSITIVE if i % 2 else NEGATIVE)}",
            "label": "positive" if i % 2 else "negative",
        }
        for i in range(64)
    ]
    data = write_jsonl(folder / "train.jsonl", rows)
    return pipeline.train(classification_config(tiny_encoder, data, folder / "runs", epochs=1))


# --- task files ---------------------------------------------------------------------------------------


SUPERGLUE = ["superglue_boolq", "superglue_cb", "superglue_copa", "superglue_wic", "superglue_wsc"]


def _placeholder_values(template: str, fields: dict) -> list[str]:
    """The text each placeholder of `template` takes from `fields` (`{a}` or `{a[b]}`), found independently of
    the renderer under test."""
    values = []
    for _, placeholder, _, _ in string.Formatter().parse(template):
        if placeholder:
            name, *keys = placeholder.replace("]", "").split("[")
            value = fields[name]
            for key in keys:
                value = value[key]
            values.append(" ".join(map(str, value)) if isinstance(value, list) else str(value).strip())
    return values


def test_every_builtin_task_loads_and_renders_every_template():
    expected = {"sst2", "rte", "cola", "dialogsum", "multi30k_de_en", "conll2003", "squad_mini", "imdb", "xsum"}
    assert expected | {"alpaca", *SUPERGLUE} <= set(builtin_tasks())
    for name in builtin_tasks():
        spec = load_task(name)
        records = load_records(spec, limit=2)
        assert len(records) == 2
        if not spec.handler.templated:  # a conversation is asked through its own turns
            assert spec.target(records[0]), name
        elif spec.kind != "language_modeling":
            assert len(spec.templates) >= 3, name
            for i, template in enumerate(spec.templates):
                assert set(template_fields(template)) <= set(records[0].fields), (name, template)
                prompt = spec.prompt(records[0], i)
                assert all(value in prompt for value in _placeholder_values(template, records[0].fields)), (name, i)
            assert spec.target(records[0])
        if spec.kind == "classification":
            assert all(spec.label_of(r) in spec.label_words for r in records)
            assert spec.stop and spec.primary_metric in ("accuracy", "f1_macro", "mcc"), name


def test_superglue_tasks_are_scored_with_their_official_metrics_on_the_official_validation_sets():
    sizes = {"superglue_boolq": 3270, "superglue_cb": 56, "superglue_copa": 100, "superglue_wic": 638}
    for name, rows in {**sizes, "superglue_wsc": 104}.items():
        spec = load_task(name)
        assert len(load_records(spec)) == rows, name
        assert spec.metrics == (["f1_macro", "accuracy"] if name == "superglue_cb" else ["accuracy"]), name
    copa = load_task("superglue_copa")
    record = load_records(copa, limit=1)[0]
    assert copa.target(record) == str(record.fields["label"] + 1)  # answers are "1" or "2", the choice's number


def test_wsc_templates_reach_inside_the_target_mapping():
    spec = load_task("superglue_wsc")
    record = load_records(spec, limit=1)[0]
    span1, span2 = record.fields["target"]["span1_text"], record.fields["target"]["span2_text"]
    for i in range(len(spec.templates)):
        prompt = spec.prompt(record, i)
        assert f'"{span1}"' in prompt and f'"{span2}"' in prompt and "span1_text" not in prompt


def test_alpaca_scores_held_out_instructions_never_trained_on():
    spec = load_task("alpaca")
    test, train = load_records(spec), load_records(spec, split=spec.train_split)
    validation = load_records(spec, split=spec.validation_split)
    assert (len(train), len(validation), len(test)) == (4400, 100, 500)
    lines = [{r.where for r in split} for split in (train, validation, test)]
    assert not (lines[0] & lines[1] or lines[0] & lines[2] or lines[1] & lines[2])
    assert spec.metrics == ["rougeL", "reference_perplexity"]
    no_input = next(r for r in test if not r.fields["input"])
    assert spec.prompt(no_input) == no_input.fields["instruction"].strip()  # no dangling blank lines


def test_a_task_whose_slices_share_rows_is_refused(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(
        "name: t\nkind: generation\nsource: alpaca\nsplit: 'train[4000:]'\ntrain_split: 'train[:4500]'\n"
        "templates: ['{instruction}']\nreference_field: output\n"
    )
    with pytest.raises(TaskError, match=r"split train\[4000:\] and train_split train\[:4500\] share rows"):
        load_task(str(path))
    path.write_text(path.read_text().replace("'train[:4500]'", "train"))
    with pytest.raises(TaskError, match=r"split train\[4000:\] and train_split train share rows"):
        load_task(str(path))
    path.write_text(path.read_text().replace("'train[4000:]'", "train"))
    assert load_task(str(path)).split == "train"  # a whole split named twice: an evaluation-only task


def _task_over(folder, lines: str, task: str):
    """A task file `t` over a test split of the given JSON lines, both written into `folder`."""
    (folder / "test.jsonl").write_text(lines)
    (folder / "t.yaml").write_text(f"name: t\nsource: {folder}\n{task}")
    return load_task(str(folder / "t.yaml"))


def test_a_template_key_the_record_lacks_is_an_error_naming_the_record(tmp_path):
    spec = _task_over(
        tmp_path,
        '{"text": "a", "target": {"span1_text": "x"}}\n{"text": "b", "target": "y"}\n',
        "kind: generation\ntemplates: ['{text} {target[span2_text]}']\nreference_field: text\n",
    )
    first, second = load_records(spec)
    with pytest.raises(ValueError, match=r"test.jsonl:1: task t: the template reads 'span2_text'"):
        spec.prompt(first)
    with pytest.raises(ValueError, match=r"test.jsonl:2: task t: the template reads a key of a field that holds text"):
        spec.prompt(second)
    with pytest.raises(ValueError, match="must name a record field"):
        template_fields("{target.span1_text}")


def test_records_are_a_seeded_draw_the_same_for_every_model():
    spec = load_task("sst2")
    first, again, other = (load_records(spec, 20, seed) for seed in (0, 0, 1))
    assert [r.where for r in first] == [r.where for r in again]
    assert [r.where for r in first] != [r.where for r in other]
    assert len(load_records(load_task("wiki_paragraphs"))) < len(
        load_records(load_task("squad_mini"))
    )  # distinct texts only


def test_entity_text_round_trips_to_the_gold_tags_on_all_of_conll_test():
    for record in load_records(load_task("conll2003")):
        tokens, tags = record.fields["tokens"], record.fields["tags"]
        assert parse_entities(format_entities(tokens, tags), tokens) == tags


def test_entity_parser_ignores_spans_that_are_not_in_the_sentence():
    tokens = ["Japan", "beat", "China", "in", "Japan"]
    assert parse_entities("Japan (LOC); Korea (LOC); China(LOC); beat", tokens) == ["B-LOC", "O", "B-LOC", "O", "O"]
    assert parse_entities("none", tokens) == ["O"] * 5


def test_bad_task_file_names_the_key(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nkind: classification\nsource: sst2\ntemplates: ['{text}']\ninput_fields: [text]\n")
    with pytest.raises(TaskError, match="label_words"):
        load_task(str(path))
    with pytest.raises(TaskError, match="Did you mean 'sst2'"):
        load_task("sst3")


def test_a_label_missing_from_label_words_is_an_error_naming_the_record(tmp_path):
    spec = _task_over(
        tmp_path,
        '{"text": "fine", "label": "positive"}\n{"text": "meh", "label": "neutral"}\n',
        "kind: classification\ntemplates: ['{text}']\ninput_fields: [text]\n"
        "label_words: {positive: [positive], negative: [negative]}\n",
    )
    with pytest.raises(ValueError, match=r"test.jsonl:2.*'neutral'"):
        [spec.label_of(r) for r in load_records(spec)]


# --- generation and perplexity ------------------------------------------------------------------------


def test_batched_generation_equals_one_prompt_at_a_time(decoder_target):
    tokenizer = decoder_target.tokenizer
    prompts = [
        tokenizer(text)["input_ids"]
        for text in [
            "the film",
            "a long and winding story about a cast that never was",
            "dull",
            "the ending was superb and moving",
        ]
    ]
    batched = generate_texts(
        decoder_target.model, tokenizer, prompts, decoder_only=True, batch_size=4, max_new_tokens=6
    )
    alone = [
        generate_texts(decoder_target.model, tokenizer, [p], decoder_only=True, batch_size=1, max_new_tokens=6)[0]
        for p in prompts
    ]
    assert batched == alone
    assert any(batched)


def test_packed_prefill_is_the_padded_batchs_cache_without_the_padding(decoder_target):
    """The cache built from one packed row holds, at every real position, the keys and values a left-padded
    prefill computes, and zeros where the padding goes (the attention mask hides them); `generate` then feeds
    only each prompt's last token."""
    from tunelab.eval.generate import packed_prefill

    model, tokenizer = decoder_target.model, decoder_target.tokenizer
    prompts = [tokenizer(t)["input_ids"] for t in ["the film", "a long and winding story about a cast", "dull plot"]]
    width = max(len(p) for p in prompts)
    cache = packed_prefill(model, prompts, width)
    batch = pad_batch(
        [{"input_ids": p[:-1], "attention_mask": [1] * (len(p) - 1)} for p in prompts],
        tokenizer.pad_token_id,
        left=True,
        device="cpu",
    )
    positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # as generate numbers left-padded rows
    with torch.no_grad():
        padded = model(**batch, position_ids=positions, use_cache=True).past_key_values
    for packed_layer, padded_layer in zip(cache.layers, padded.layers, strict=True):
        for i, prompt in enumerate(prompts):
            gap = width - len(prompt)
            for ours, theirs in ((packed_layer.keys, padded_layer.keys), (packed_layer.values, padded_layer.values)):
                assert ours.shape[2] == width - 1
                assert torch.allclose(ours[i, :, gap:], theirs[i, :, gap:], atol=1e-5)
                assert not ours[i, :, :gap].any()
    seen = []
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        generate_texts(model, tokenizer, prompts, decoder_only=True, batch_size=3, max_new_tokens=3)
    finally:
        hook.remove()
    assert seen[0] == sum(len(p) - 1 for p in prompts)  # one packed row: no padding prefilled
    assert set(seen[1:]) == {1}  # then every step feeds one token per row, the prompts' last ones first


def test_models_with_sliding_window_layers_prefill_padded():
    """A sliding-window layer would keep only the last window of the packed row, so such models prefill as before."""
    from tunelab.eval.generate import can_prefill_packed

    from helpers import tiny_gemma3

    gemma = tiny_gemma3()
    assert not can_prefill_packed(gemma, [[5, 6, 7], [8, 9]])


def test_answers_are_cut_at_the_first_stop_string():
    assert cut_at_stop("positive\nThe review", ["\n"]) == "positive"
    assert cut_at_stop("yes. no", [".", "\n"]) == "yes"


def test_perplexity_sliding_window_scores_every_token_once(decoder_target):
    text = "the film was great and the cast was wonderful but the ending was dull and the script was tedious"
    ids = decoder_target.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = decoder_target.model(input_ids=ids).logits[0, :-1]
    expected = -float(logits.log_softmax(-1).gather(-1, ids[0, 1:].unsqueeze(-1)).sum())
    nll, count = _text_nll(decoder_target, text, window=256, stride=128)
    assert count == ids.shape[1] - 1
    assert nll == pytest.approx(expected, rel=1e-5)
    windowed, windowed_count = _text_nll(decoder_target, text, window=8, stride=4)
    assert windowed_count == count  # each token once, though seen through short windows
    assert windowed != pytest.approx(nll, rel=1e-9)  # with less context the score differs


# --- suites -------------------------------------------------------------------------------------------


def test_retention_suite_runs_every_task_kind_on_a_decoder(decoder_target):
    report, results = run_suite(decoder_target, load_suite("retention"), limit=3, samples=50)
    assert set(report["tasks"]) == {
        "squad_mini",
        "dialogsum",
        "conll2003",
        "rte",
        "superglue_boolq",
        "superglue_copa",
        "multi30k_de_en",
        "xsum",
        "wiki_paragraphs",
    }
    for name, task in report["tasks"].items():
        assert "skipped" not in task, name
        for interval in task["metrics"].values():
            assert interval["low"] <= interval["value"] <= interval["high"] or interval["low"] == interval["high"]
    assert report["tasks"]["wiki_paragraphs"]["metrics"]["perplexity"]["value"] > 1
    assert "wiki_paragraphs" not in report["average"]["over"]  # perplexity is not on the 0-100 scale
    rte = results["rte"]
    expected = 100 * sum(p == r for p, r in zip(rte.predictions, rte.references)) / 3
    assert report["tasks"]["rte"]["metrics"]["accuracy"]["value"] == pytest.approx(expected)


def test_superglue_mini_scores_all_five_tasks_zero_shot_on_a_decoder(decoder_target):
    report, results = run_suite(decoder_target, load_suite("superglue-mini"), limit=3, samples=50)
    assert list(report["tasks"]) == SUPERGLUE
    assert set(report["tasks"]["superglue_cb"]["metrics"]) == {"f1_macro", "accuracy"}
    assert report["average"]["over"] == {name: load_task(name).primary_metric for name in SUPERGLUE}
    copa = results["superglue_copa"]
    assert all(p in (None, "0", "1") for p in copa.predictions) and set(copa.references) <= {"0", "1"}


def test_a_classifier_is_scored_only_on_tasks_with_its_labels(classifier_run):
    target = load_target(str(classifier_run.path), batch_size=8)
    report, results = run_suite(target, load_suite("glue-mini"), limit=8, samples=50)
    assert "skipped" not in report["tasks"]["sst2"]
    assert "labels" in report["tasks"]["rte"]["skipped"] and "labels" in report["tasks"]["cola"]["skipped"]
    assert report["average"]["over"] == {"sst2": "accuracy"}
    sst2 = results["sst2"]
    assert all(p in ("positive", "negative") for p in sst2.predictions)


def test_tasks_list_shows_every_task_and_suite(capsys):
    assert main(["tasks", "list"]) == 0
    shown = capsys.readouterr().out
    assert all(f"\n{name} " in f"\n{shown}" for name in builtin_tasks())
    assert "superglue-mini   superglue_boolq (100), superglue_cb (all)" in shown


def test_eval_cli_writes_the_suite_report(classifier_run, tmp_path, capsys):
    assert main(["eval", str(classifier_run.path), "--suite", "glue-mini", "--limit", "4", "--samples", "20"]) == 0
    report = json.loads((classifier_run.path / "eval" / "glue-mini.json").read_text())
    assert report["tasks"]["sst2"]["examples"] == 4
    assert (classifier_run.path / "eval" / "glue-mini.md").read_text().startswith("# glue-mini")
    assert len((classifier_run.path / "eval" / "glue-mini.outputs.jsonl").read_text().splitlines()) == 4
    assert main(["eval", str(classifier_run.path), "--suite", "glue-mino"]) == 2
    assert "Did you mean 'glue-mini'" in capsys.readouterr().err
    assert main(["eval", str(classifier_run.path)]) == 2


# --- forgetting ---------------------------------------------------------------------------------------


def test_forgetting_flags_a_significant_drop_and_not_noise():
    spec = load_task("sst2")
    gold = ["positive", "negative"] * 20
    base = scored_result(spec, list(gold), gold)
    wrong = ["negative" if g == "positive" else "positive" for g in gold]
    row = _task_row(spec, base, scored_result(spec, wrong, gold), samples=200, seed=0)
    assert row["change"]["value"] == pytest.approx(-100.0) and row["forgotten"] and row["significant"]
    one_miss = list(gold)
    one_miss[0] = "negative"
    row = _task_row(spec, base, scored_result(spec, one_miss, gold), samples=200, seed=0)
    assert row["change"]["value"] == pytest.approx(-2.5) and not row["significant"] and not row["forgotten"]


def test_forgetting_knows_lower_perplexity_is_better():
    spec = load_task("wiki_paragraphs").model_copy(update={"metrics": ["perplexity"]})  # lm-eval's need rolling_nll
    base = scored_result(spec, [(20.0, 10)] * 30, [None] * 30)
    worse = scored_result(spec, [(30.0, 10)] * 30, [None] * 30)
    row = _task_row(spec, base, worse, samples=100, seed=0)
    assert row["forgotten"] and row["relative_change_pct"] > 0
    row = _task_row(spec, worse, base, samples=100, seed=0)
    assert not row["forgotten"] and row["significant"]


def test_forgetting_report_and_cli_on_a_tuned_run(decoder_run, tiny_decoder, tmp_path):
    run = copied_run(decoder_run("lora"), tmp_path)  # the CLI saves its report into the run
    suite = Suite(name="mini", tasks=[{"task": "rte", "limit": 6}, {"task": "wiki_paragraphs", "limit": 3}])
    report = forgetting_report(
        lambda: load_target(tiny_decoder), lambda: load_target(str(run.path)), suite, samples=50
    )
    assert report["tasks"]["rte"]["examples"] == 6
    assert set(report["tasks"]["rte"]["unmatched_share"]) == {"base", "tuned"}
    perplexity = report["tasks"]["wiki_paragraphs"]
    assert perplexity["tuned"]["value"] != perplexity["base"]["value"]  # tuning moved the model
    assert perplexity["change"]["value"] == pytest.approx(perplexity["tuned"]["value"] - perplexity["base"]["value"])
    assert (
        main(["forgetting", tiny_decoder, str(run.path), "--suite", "glue-mini", "--limit", "3", "--samples", "20"])
        == 0
    )
    saved = json.loads((run.path / "eval" / "forgetting-glue-mini.json").read_text())
    assert set(saved["tasks"]) == {"sst2", "rte", "cola"}


def test_training_with_a_retention_suite_puts_the_forgetting_table_in_the_card(tiny_decoder, copy_task_file, tmp_path):
    config = generation_config(tiny_decoder, copy_task_file, tmp_path / "runs", max_steps=2)
    config.eval.retention_suite, config.eval.retention_limit = "retention", 2
    run = pipeline.train(config)
    report = json.loads((run.path / "eval" / "forgetting-retention.json").read_text())
    assert len(report["tasks"]) == len(load_suite("retention").tasks) == 9
    card = (run.path / "README.md").read_text()
    assert "## Forgetting (retention suite)" in card and "wiki_paragraphs" in card


def test_an_unknown_retention_suite_fails_before_training(tiny_decoder, copy_task_file, tmp_path):
    config = generation_config(tiny_decoder, copy_task_file, tmp_path / "runs")
    config.eval.retention_suite = "retension"
    with pytest.raises(TaskError, match="Did you mean 'retention'"):
        pipeline.train(config)
    assert not (tmp_path / "runs").exists()


# --- robustness ---------------------------------------------------------------------------------------


def test_perturbations_touch_inputs_never_labels_and_are_deterministic():
    spec = load_task("rte")
    records = load_records(spec, 10)
    noisy = perturbed_records(records, spec, "typos", 0.3, seed=0)
    assert noisy == perturbed_records(records, spec, "typos", 0.3, seed=0)
    assert [r.fields["label"] for r in noisy] == [r.fields["label"] for r in records]
    assert any(n.fields["sentence1"] != r.fields["sentence1"] for n, r in zip(noisy, records))
    with pytest.raises(TaskError, match="not perturbed"):
        perturbed_records(records, load_task("conll2003"), "typos", 0.3, seed=0)


def test_robustness_report_compares_clean_and_noisy_on_the_same_examples(classifier_run):
    target = load_target(str(classifier_run.path))
    spec = load_task("sst2")
    records = load_records(spec, 30)
    report = robustness_report(target, spec, records, ["casing", "typos"], severity=0.5, samples=50)
    clean = run_task(target, spec, records, samples=50)
    assert report["clean"]["value"] == pytest.approx(clean.scores["accuracy"].value)
    for name in ("casing", "typos"):
        row = report["perturbations"][name]
        assert row["change"]["value"] == pytest.approx(row["score"]["value"] - report["clean"]["value"])


# --- bias ---------------------------------------------------------------------------------------------


def test_counterfactual_records_rewrite_inputs_and_references_not_labels():
    spec = load_task("sst2")
    records = [
        Record({"text": "he loved his mother", "label": "positive"}, "x:1"),
        Record({"text": "a dull film", "label": "negative"}, "x:2"),
    ]
    chosen = mentioning(records, spec, "gender_words", None, 0)
    assert [r.where for r in chosen] == ["x:1"]
    female = counterfactual_records(chosen, spec, "gender_words", "female")[0]
    assert female.fields == {"text": "she loved her mother", "label": "positive"}
    summaries = counterfactual_records(
        [Record({"dialogue": "Mr. Smith calls his son.", "summaries": ["He calls his son."]}, "y")],
        load_task("dialogsum"),
        "gender_words",
        "female",
    )[0]
    assert summaries.fields["summaries"] == ["She calls her daughter."] and not mentions(
        summaries.fields["dialogue"], "gender_words", "male"
    )


def test_bias_flip_rate_is_the_share_of_changed_predictions(classifier_run):
    target = load_target(str(classifier_run.path))
    spec = load_task("sst2")
    report = bias_report(target, spec, load_records(spec), ["gender_words"], limit=40, samples=50)
    row = report["attributes"]["gender_words"]
    assert row["examples"] == 40
    chosen = mentioning(load_records(spec), spec, "gender_words", 40, 0)
    config = RunConfig(data=DataConfig(text_field="text"))
    by_group = {
        g: [
            p["label"]
            for p in classify(
                target.model,
                target.tokenizer,
                counterfactual_records(chosen, spec, "gender_words", g),
                config,
                target.labels,
            )
        ]
        for g in ("female", "male")
    }
    flips = 100 * sum(a != b for a, b in zip(by_group["female"], by_group["male"])) / 40
    assert row["flip_rate"]["value"] == pytest.approx(flips)
    assert row["flip_rate"]["low"] <= flips <= row["flip_rate"]["high"]


def test_classifier_batches_come_in_a_few_padded_widths_and_score_as_unpadded(classifier_run, monkeypatch):
    """Length-sorted batches padded to multiples of PAD_MULTIPLE (bounded shapes keep the CPU's bf16 kernel cache
    small), never past data.max_length, with the scores of batches padded only to their longest example."""
    from tunelab.eval import predict

    target = load_target(str(classifier_run.path))
    records = load_records(load_task("sst2"), limit=64)
    data = DataConfig(text_field="text", max_length=40)
    widths: list[int] = []

    def logits(batch):
        widths.append(batch["input_ids"].shape[1])
        return target.model(**batch).logits

    padded = predict.classify_with(logits, target.tokenizer, records, data, 8, target.labels)
    assert set(widths) <= {32, 40} and 40 in widths  # 40: the limit, not 64
    monkeypatch.setattr(predict, "PAD_MULTIPLE", 1)
    widths.clear()
    exact = predict.classify_with(logits, target.tokenizer, records, data, 8, target.labels)
    assert len(set(widths)) > 2
    for a, b in zip(padded, exact):
        assert a["label"] == b["label"]
        assert all(a["scores"][k] == pytest.approx(b["scores"][k], abs=1e-5) for k in a["scores"])


def test_bias_and_robustness_cli_write_reports(classifier_run, capsys):
    assert (
        cli(f"robustness {classifier_run.path} --task sst2 --perturbations slang,whitespace --limit 10 --samples 20")
        == 0
    )
    assert set(json.loads((classifier_run.path / "eval" / "robustness-sst2.json").read_text())["perturbations"]) == {
        "slang",
        "whitespace",
    }
    assert main(["bias", str(classifier_run.path), "--task", "sst2", "--limit", "10", "--samples", "20"]) == 0
    assert set(json.loads((classifier_run.path / "eval" / "bias-sst2.json").read_text())["attributes"]) == {
        "gender_words",
        "names",
    }
    assert main(["robustness", str(classifier_run.path), "--task", "sst2", "--perturbations", "typo"]) == 2
    assert "typos" in capsys.readouterr().err


def test_human_cli_reports_an_unknown_sheet_as_an_error(capsys):
    assert main(["human", "report", "no-such-sheet"]) == 2
    assert "no-such-sheet" in capsys.readouterr().err


def test_hub_style_squad_answers_are_read_as_references(tmp_path):
    (tmp_path / "test.jsonl").write_text(
        json.dumps(
            {
                "context": "Paris is in France.",
                "question": "Where is Paris?",
                "answers": {"text": ["France", "in France"], "answer_start": [12, 9]},
            }
        )
        + "\n"
    )
    path = tmp_path / "squad.yaml"
    path.write_text(
        f"name: squad\nkind: qa\nsource: {tmp_path}\ntemplates: ['{{context}} {{question}}']\n"
        "input_fields: [question]\nreference_field: answers\n"
    )
    spec = load_task(str(path))
    assert spec.reference_of(load_records(spec)[0]) == ["France", "in France"]
