"""Reward models (data.kind: reward) and the judge (eval.judge): a tiny reward run of a decoder read through its
chat template and of an encoder read as a plain transcript trains by the pairwise loss, LoRA or full; evaluation
gives pairwise accuracy with an interval, and a model that scores by a known rule gets the accuracy the rule gives;
`eval` and `predict` read a run's scores, `serve` answers them at /v1/score and refuses bad requests naming the
field; the judge's win rate on constructed answers is the known one, and a generating run with `eval.judge` writes
it to eval.json, eval/judge.jsonl and its card.

The pairs are written here: the chosen answer calls a thing by a word of praise, the rejected one by a word of
blame, in each form a pair may take (strings, messages, two whole conversations).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer

from tunelab import pipeline
from tunelab.config import ConfigError, build_config, load_config
from tunelab.eval.judge import RewardJudge, check_judge, win_rate
from tunelab.eval.runner import run_task, skip_reason
from tunelab.eval.targets import Target
from tunelab.kinds.reward import conversation_ids, transcript
from tunelab.records import DataError, Record
from tunelab.run_commands import evaluate_run, predict_run
from tunelab.runs import RunDir
from tunelab.serve.catalog import load_catalog
from tunelab.tasks import TaskSpec

from helpers import NEGATIVE, NOUNS, POSITIVE, cli, copy_rows, generation_config, write_jsonl, write_yaml
from serving import call, endpoint_outcomes, expected_outcomes, in_process


def pair_rows(count: int = 64, seed: int = 0) -> list[dict]:
    """Pairs whose chosen answer praises and whose rejected answer blames, a third in each form a pair takes."""
    rng = random.Random(seed)
    rows = []
    for number in range(count):
        noun = rng.choice(NOUNS)
        question, good, bad = (
            f"How was the {noun}?",
            f"the {noun} was {rng.choice(POSITIVE)}",
            f"the {noun} was {rng.choice(NEGATIVE)}",
        )
        if number % 3 == 0:
            rows.append({"prompt": question, "chosen": good, "rejected": bad})
        elif number % 3 == 1:
            prompt = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": question}]
            rows.append(
                {
                    "prompt": prompt,
                    "chosen": [{"role": "assistant", "content": good}],
                    "rejected": {"role": "assistant", "content": bad},
                }
            )
        else:
            user = {"role": "user", "content": question}
            rows.append(
                {
                    "chosen": [user, {"role": "assistant", "content": good}],
                    "rejected": [user, {"role": "assistant", "content": bad}],
                }
            )
    return rows


def reward_config(model_dir, data_file, out, method: str = "lora", **training):
    """A tiny reward run: 3 epochs of batches of 8 pairs, validation every epoch."""
    return build_config(
        {
            "name": f"tiny-reward-{method}",
            "output_dir": str(out),
            "model": {"name": str(model_dir)},
            "data": {"kind": "reward", "train": str(data_file), "max_length": 48},
            "method": {"name": method},
            "training": {"epochs": 3, "batch_size": 8, "logging_steps": 2, "precision": "fp32", **training},
        }
    )


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", pair_rows())


@pytest.fixture(scope="module")
def reward_run(trained_run, pairs_file, chat_decoder, tiny_encoder):
    """`reward_run(model, method)`: a tiny reward run of the chat decoder ('decoder', its ChatML template) or the
    tiny encoder ('encoder', no template: transcripts), shared."""
    models = {"decoder": chat_decoder, "encoder": tiny_encoder}
    return lambda model, method: trained_run(
        reward_config, models[model], pairs_file, method=method, learning_rate=1e-2
    )


def _logged(run) -> list[dict]:
    return [json.loads(line) for line in run.metrics_path.read_text().splitlines()]


@pytest.mark.parametrize(
    "model, method", [("decoder", "lora"), ("decoder", "full"), ("encoder", "full"), ("encoder", "lora")]
)
def test_a_reward_model_trains_by_the_pairwise_loss_and_is_scored_by_pairwise_accuracy(reward_run, model, method):
    """Trained, it ranks more held-out pairs the right way round than its untrained head did (a tiny random encoder
    under LoRA moves its scores too little for its loss to show it within 24 steps: the decoders' losses fall, in
    the test below)."""
    run = reward_run(model, method)
    validations = [entry for entry in _logged(run) if "eval_loss" in entry]
    assert validations and all(0 <= entry["eval_accuracy"] <= 100 for entry in validations), validations
    state = json.loads(run.state_path.read_text())
    assert state["labels"] == ["reward"]
    if method == "lora":  # the new head trains beside the adapters
        assert 0 < state["trainable"]["trainable_params"] < state["trainable"]["total_params"] / 10
    (task,) = json.loads(run.eval_path.read_text())["tasks"].values()
    assert task["metric"] == "pairwise_accuracy" and task["tuned"]["scoring"] == "reward"
    tuned, base = task["tuned"]["metrics"]["pairwise_accuracy"], task["base"]["metrics"]["pairwise_accuracy"]
    assert tuned["low"] <= tuned["value"] <= tuned["high"] and base["low"] <= base["value"] <= base["high"]
    assert tuned["value"] > base["value"], (base, tuned)
    assert "pairwise_accuracy" in run.card_path.read_text()


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_decoders_pairwise_loss_falls_and_it_learns_the_pairs_rule(reward_run, method):
    """Praise against blame is a rule the tiny decoder learns in 24 steps: its loss falls, and it ranks every
    held-out pair the right way round, where its untrained head ranked them at chance."""
    run = reward_run("decoder", method)
    losses = [entry["loss"] for entry in _logged(run) if "loss" in entry]
    assert losses[-1] < losses[0] - 0.1, losses
    (task,) = json.loads(run.eval_path.read_text())["tasks"].values()
    assert task["tuned"]["metrics"]["pairwise_accuracy"]["value"] == 100.0


class LengthScorer(torch.nn.Module):
    """A reward model whose score is the number of tokens it reads: a rule whose accuracy is known in advance."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(max_position_embeddings=512)

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=attention_mask.sum(dim=-1, keepdim=True).float())


@pytest.fixture
def length_target(tiny_encoder) -> Target:
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    return Target("length", LengthScorer(), tokenizer, "encoder", ["reward"], 4, head=True, reward=True)


REWARD_TASK = TaskSpec(name="pairs", kind="reward", source="", max_length=64)


def _pair(number: int, chosen: str, rejected: str) -> Record:
    return Record({"prompt": "Say something.", "chosen": chosen, "rejected": rejected}, f"pairs.jsonl:{number}")


def test_a_model_that_scores_by_length_gets_the_accuracy_the_rule_gives(length_target):
    """Chosen longer in three pairs, shorter in one, as long in one (a tie counts as a miss): 60 of 100."""
    records = [
        _pair(1, "a b c d", "a b"),
        _pair(2, "a b c", "a"),
        _pair(3, "a b c d e", "a b c"),
        _pair(4, "a", "a b c"),
        _pair(5, "a b", "c d"),
    ]
    result = run_task(length_target, REWARD_TASK, records, samples=200)
    assert result.scores["pairwise_accuracy"].value == 60.0
    assert result.scores["pairwise_accuracy"].low < 60.0 < result.scores["pairwise_accuracy"].high
    assert result.predictions[0][0] - result.predictions[0][1] == 2  # two more tokens, two more points


def test_a_reward_model_and_the_other_kinds_skip_each_others_tasks(length_target, tiny_encoder):
    generator = Target("gen", LengthScorer(), length_target.tokenizer, "decoder")
    assert "which gen is not; train one with data.kind: reward" in skip_reason(generator, REWARD_TASK)
    classification = TaskSpec(
        name="sst", kind="classification", source="", input_fields=["text"], label_words={"a": ["a"], "b": ["b"]}
    )
    assert "is a reward model" in skip_reason(length_target, classification)


def test_an_unpaired_example_is_refused_naming_its_line(tmp_path, tiny_encoder, pairs_file):
    rows = pair_rows(12) + [{"prompt": "How was it?", "completion": "fine", "label": True}]
    data = write_jsonl(tmp_path / "mixed.jsonl", rows)
    with pytest.raises(DataError, match=r"mixed.jsonl:13: an unpaired example .* a reward model learns from pairs"):
        pipeline.train(reward_config(tiny_encoder, data, tmp_path / "runs"))


def test_a_transcript_is_cut_from_the_left_keeping_the_answer_and_the_special_tokens(tiny_encoder):
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    messages = [{"role": "user", "content": "word " * 40}, {"role": "assistant", "content": "the final answer"}]
    assert transcript(messages).endswith("\n\nAssistant: the final answer")
    ids, length = conversation_ids(messages, None, tokenizer, 12)
    assert len(ids) == 12 and length > 40
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.decode(ids[1:-1]).endswith("assistant : the final answer")


def test_eval_and_predict_read_a_reward_runs_scores(reward_run, tmp_path):
    run = reward_run("encoder", "full")
    pairs = write_jsonl(tmp_path / "held_out.jsonl", pair_rows(10, seed=3))
    report = json.loads(evaluate_run(run, str(pairs), output=tmp_path / "eval").read_text())
    (result,) = report["tasks"].values()
    accuracy = result["metrics"]["pairwise_accuracy"]
    assert accuracy["low"] <= accuracy["value"] <= accuracy["high"]

    singles = [{"prompt": "How was the film?", "completion": "the film was great"}]
    inputs = write_jsonl(tmp_path / "inputs.jsonl", pair_rows(3, seed=4) + singles)
    assert predict_run(run, str(inputs), str(tmp_path / "scores.jsonl")) == 4
    written = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert all(
        isinstance(row["score_chosen"], float) and isinstance(row["score_rejected"], float) for row in written[:3]
    )
    assert isinstance(written[3]["score"], float) and "score_chosen" not in written[3]
    assert cli(f"eval {run.path} --data {pairs} --output {tmp_path / 'cli'}") == 0
    with pytest.raises(DataError, match=r"inputs.jsonl:4: an unpaired example .* a reward model learns from pairs"):
        evaluate_run(run, str(inputs), output=tmp_path / "eval")


@pytest.fixture(scope="module")
def reward_server(reward_run, tiny_decoder):
    """A LoRA reward run (decoder, ChatML) and a generator served in one process."""
    catalog = load_catalog([f"rm={reward_run('decoder', 'lora').path}", f"gen={tiny_decoder}"])
    with in_process(catalog) as url:
        yield url


GOOD = [{"role": "user", "content": "How was the film?"}, {"role": "assistant", "content": "the film was great"}]
BAD = [{"role": "user", "content": "How was the film?"}, {"role": "assistant", "content": "the film was awful"}]


def test_serve_scores_a_conversation_or_a_list_as_predict_does(reward_server, reward_run, tmp_path):
    status, one, _ = call(reward_server, "/v1/score", {"model": "rm", "messages": GOOD})
    assert status == 200 and [row["index"] for row in one["data"]] == [0] and one["usage"]["prompt_tokens"] > 0
    status, two, _ = call(reward_server, "/v1/score", {"model": "rm", "messages": [GOOD, BAD]})
    assert status == 200 and two["data"][0]["score"] == pytest.approx(one["data"][0]["score"], abs=1e-5)
    pair = write_jsonl(tmp_path / "pair.jsonl", [{"prompt": GOOD[:1], "chosen": GOOD[1:], "rejected": BAD[1:]}])
    predict_run(reward_run("decoder", "lora"), str(pair), str(tmp_path / "scores.jsonl"))
    predicted = json.loads((tmp_path / "scores.jsonl").read_text())
    served = [row["score"] for row in two["data"]]
    assert served == pytest.approx([predicted["score_chosen"], predicted["score_rejected"]], abs=1e-4)


@pytest.mark.parametrize(
    "messages, param",
    [
        ([], "messages"),
        ("hello", "messages"),
        (GOOD[:1], "messages[0].role"),  # ends with the user's turn: no answer to score
        ([GOOD, GOOD[:1]], "messages[1][0].role"),
        ([{"role": "robot", "content": "hi"}], "messages[0].role"),
        ([GOOD, "hello"], "messages[1]"),
        ([{"role": "user"}, GOOD[1]], "messages[0]"),
    ],
)
def test_a_bad_score_request_is_a_400_naming_the_field(reward_server, messages, param):
    status, error, _ = call(reward_server, "/v1/score", {"model": "rm", "messages": messages})
    assert status == 400 and error["error"]["param"] == param, error


def test_a_reward_model_answers_only_at_score_and_a_generator_not_there(reward_server):
    models = {"rm": "score", "gen": "generate"}

    def ask(endpoint: str, body: dict) -> tuple[int, dict]:
        return call(reward_server, endpoint, body)[:2]

    assert endpoint_outcomes(ask, models) == expected_outcomes(models)
    status, error, _ = call(reward_server, "/v1/score", {"model": "nobody", "messages": GOOD})
    assert status == 404 and error["error"]["param"] == "model"
    schema = call(reward_server, "/openapi.json")[1]
    assert sorted(schema["paths"]["/v1/score"]["post"]["responses"]) == ["200", "400", "404", "413", "429", "504"]
    assert schema["components"]["schemas"]["ScoreRequest"]["properties"]["model"]["examples"] == ["rm"]


def test_the_judges_win_rate_on_constructed_answers_is_the_known_one(length_target):
    """Tuned longer on two prompts, as long on one (half a win), shorter on one: 62.5 of 100."""
    judge = RewardJudge("length", length_target.model, length_target.tokenizer, max_length=64)
    prompts = [[{"role": "user", "content": f"question {n}"}] for n in range(4)]
    rate = win_rate(judge, prompts, ["a", "a b", "a b", "a b c"], ["a b c", "a b c d", "c d", "a"], samples=200)
    assert rate.value == 62.5 and rate.low < 62.5 < rate.high


@pytest.fixture(scope="module")
def judged_run(reward_run, tiny_decoder, tmp_path_factory):
    """A tiny generating run (the copy task, LoRA) judged by the encoder's reward run, its config written to a file
    that names the judge by a path relative to it."""
    folder = tmp_path_factory.mktemp("judged")
    rng = random.Random(0)
    data = write_jsonl(folder / "copy.jsonl", copy_rows([rng.choice(POSITIVE + NEGATIVE + NOUNS) for _ in range(40)]))
    judge = reward_run("encoder", "full").path
    settings = generation_config(tiny_decoder, data, folder / "runs", max_steps=3).model_dump(mode="json")
    settings["eval"]["judge"] = os.path.relpath(judge, folder)
    config = load_config(write_yaml(folder / "judged.yaml", settings))
    assert config.eval.judge == str(judge)  # read from the config file's folder, as data paths are
    return pipeline.train(config)


def test_a_judged_run_writes_the_win_rate_to_eval_json_the_card_and_judge_jsonl(judged_run):
    judged = json.loads(judged_run.eval_path.read_text())["judge"]
    (task,) = judged["tasks"].values()
    assert task["examples"] == 4 and task["win_rate"]["low"] <= task["win_rate"]["value"] <= task["win_rate"]["high"]
    rows = [json.loads(line) for line in (judged_run.path / "eval" / "judge.jsonl").read_text().splitlines()]
    base = json.loads(judged_run.base_eval_path.read_text())
    assert [row["base"] for row in rows] == next(iter(base.values()))["answers"]
    wins = [
        100.0 if r["tuned_score"] > r["base_score"] else 50.0 if r["tuned_score"] == r["base_score"] else 0.0
        for r in rows
    ]
    assert task["win_rate"]["value"] == pytest.approx(sum(wins) / len(wins))
    assert "## Reward-model win rate, tuned over base" in judged_run.card_path.read_text()


def test_tunelab_judge_gives_a_finished_run_the_verdict_eval_judge_gives_at_the_end_of_training(
    judged_run, reward_run, tmp_path, capsys
):
    copy = tmp_path / "unjudged"
    shutil.copytree(judged_run.path, copy)
    evaluation = json.loads((copy / "eval.json").read_text())
    verdict = evaluation.pop("judge")
    (copy / "eval.json").write_text(json.dumps(evaluation))
    (copy / "eval" / "judge.jsonl").unlink()
    card = (copy / "README.md").read_text()
    (copy / "README.md").write_text(card.replace("## Reward-model win rate, tuned over base", "## (removed)"))
    assert cli(f"judge {copy} --by {reward_run('encoder', 'full').path}") == 0
    assert json.loads((copy / "eval.json").read_text())["judge"] == verdict
    assert (copy / "eval" / "judge.jsonl").read_text() == (judged_run.path / "eval" / "judge.jsonl").read_text()
    assert "## Reward-model win rate, tuned over base" in (copy / "README.md").read_text()
    assert load_config(copy / "config.yaml").eval.judge == str(reward_run("encoder", "full").path)
    assert "win" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="reward"):  # a judge that is no reward run is refused before anything loads
        pipeline.judge_run(RunDir(copy), str(judged_run.path))
    unscored = json.loads((copy / "eval.json").read_text())
    for task in unscored["tasks"].values():
        task["base"] = None
    (copy / "eval.json").write_text(json.dumps(unscored))
    with pytest.raises(ConfigError, match="no base model"):  # no base answers to compare with
        pipeline.judge_run(RunDir(copy), str(reward_run("encoder", "full").path))


def test_a_preference_run_judged_by_a_reward_model_writes_the_win_rate(reward_run, chat_decoder, pairs_file, tmp_path):
    """The judge of the preference issue's evidence: a tiny DPO run of the chat decoder, judged by the reward run
    of the same decoder; an answer the tuning left as it was is a tie, half a win."""
    judge = reward_run("decoder", "lora").path
    config = build_config(
        {
            "name": "tiny-dpo-judged",
            "output_dir": str(tmp_path),
            "model": {"name": chat_decoder},
            "data": {"kind": "preference", "train": str(pairs_file), "max_length": 64, "max_target_length": 16},
            "method": {"name": "lora"},
            "training": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-3, "precision": "fp32"},
            "eval": {"max_new_tokens": 6, "judge": str(judge)},
        }
    )
    run = pipeline.train(config)
    judged = json.loads(run.eval_path.read_text())["judge"]
    (task,) = judged["tasks"].values()
    rows = [json.loads(line) for line in (run.path / "eval" / "judge.jsonl").read_text().splitlines()]
    assert judged["judge"] == str(judge) and task["examples"] == len(rows) > 0
    wins = [100.0 if r["tuned_score"] > r["base_score"] else 50.0 if r["tuned"] == r["base"] else 0.0 for r in rows]
    assert task["win_rate"]["value"] == pytest.approx(sum(wins) / len(wins))


def _judged_by(config, judge, **evaluation):
    return config.model_copy(update={"eval": config.eval.model_copy(update={"judge": str(judge), **evaluation})})


def test_a_judge_that_is_no_reward_run_or_a_run_it_cannot_judge_is_refused(
    reward_run, decoder_run, tiny_decoder, tiny_encoder, tmp_path
):
    data = write_jsonl(tmp_path / "copy.jsonl", copy_rows(["film"] * 8))
    generating, judge = generation_config(tiny_decoder, data, tmp_path), reward_run("encoder", "full").path
    check_judge(_judged_by(generating, judge))
    with pytest.raises(ConfigError, match="is not a run directory; give a reward-model run"):
        check_judge(_judged_by(generating, tmp_path))
    with pytest.raises(ConfigError, match="is a generation run, not a reward model"):
        check_judge(_judged_by(generating, decoder_run("lora").path))
    with pytest.raises(ConfigError, match="keep zero_shot in eval.baselines"):
        check_judge(_judged_by(generating, judge, baselines=[]))
    with pytest.raises(ConfigError, match="generates none"):
        check_judge(_judged_by(reward_config(tiny_encoder, data, tmp_path), judge))
