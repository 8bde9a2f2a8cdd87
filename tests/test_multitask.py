"""Multi-task training end to end on tiny models: the planned mixture is what is trained, stages switch at
their step, per-task loss weights reach the gradient, held-out tasks stay untrained, and the multi-head and
per-task-adapter architectures train and route by task."""

from __future__ import annotations

import json

import pytest

from tunelab import pipeline, run_commands
from tunelab.cli import main
from tunelab.config import ConfigError, build_config
from tunelab.data.encode import TaskCollator
from tunelab.data.plan import plan_training
from tunelab.data.taskset import load_taskset
from tunelab.records import DataError
from tunelab.resolve import check_config
from tunelab.train.objectives import objective_of
from tunelab.train.trainer import CompletionLossTrainer

from helpers import mixture_config


def planned(config):
    return plan_training(config, load_taskset(config), one_task_per_batch=objective_of(config).one_task_per_batch)


def test_plan_follows_the_strategy_and_is_saved_with_the_run(tiny_decoder, tmp_path):
    proportional = planned(mixture_config(tiny_decoder, tmp_path))
    equal = planned(mixture_config(tiny_decoder, tmp_path, strategy="equal"))

    def count(plan, task):
        return sum(t == task for t, _ in plan.order)

    assert (count(proportional, "sst2"), count(proportional, "rte")) == (24, 8)
    assert (count(equal, "sst2"), count(equal, "rte")) == (16, 16)  # rte up-sampled, sst2 down-sampled
    temperature = planned(mixture_config(tiny_decoder, tmp_path, strategy="temperature", temperature=3.0))
    assert 8 < count(temperature, "rte") < 16  # between proportional and equal


def test_curriculum_stage_switches_at_its_step(tiny_decoder, tmp_path):
    config = mixture_config(
        tiny_decoder,
        tmp_path,
        tasks=[],
        stages=[
            {"name": "related", "tasks": [{"task": "sst2", "max_examples": 24}], "steps": 3},
            {"name": "target", "tasks": [{"task": "rte", "max_examples": 8}], "steps": 2},
        ],
    )
    plan = planned(config)
    assert plan.boundaries == [3]
    assert {t for t, _ in plan.order[:12]} == {"sst2"} and {t for t, _ in plan.order[12:]} == {"rte"}
    assert len(plan.order) == 20
    assert [s["starts_at_step"] for s in plan.stages] == [0, 3]


def test_bad_mixtures_are_config_errors(tiny_decoder, tmp_path):
    with pytest.raises(ConfigError, match="needs mixture.cap"):
        mixture_config(tiny_decoder, tmp_path, strategy="capped")
    with pytest.raises(ConfigError, match="multi_head"):
        check_config(mixture_config(tiny_decoder, tmp_path, objective="classifier"))
    with pytest.raises(ConfigError, match="takes no per-task loss_weight"):
        mixture_config(tiny_decoder, tmp_path, method="prompt", tasks=[{"task": "sst2", "loss_weight": 2.0}])
    with pytest.raises(ConfigError, match="early_stopping_patience needs a best checkpoint"):
        build_config(
            {**mixture_config(tiny_decoder, tmp_path).model_dump(), "training": {"early_stopping_patience": 2}}
        )
    with pytest.raises(ConfigError, match="method.name: full"):
        check_config(mixture_config(tiny_decoder, tmp_path, objective="multi_head", method="lora"))
    with pytest.raises(DataError, match="eval_only"):
        planned(mixture_config(tiny_decoder, tmp_path, tasks=[{"task": "squad_mini"}]))


def test_loss_weights_scale_each_tasks_gradient(tiny_decoder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.data.encode import make_collator

    model = AutoModelForCausalLM.from_pretrained(tiny_decoder)
    tokenizer = AutoTokenizer.from_pretrained(tiny_decoder)
    examples = [
        {"input_ids": [101, 2000 + i, 2100 + i, 102], "attention_mask": [1] * 4, "labels": [-100, -100, 2100 + i, 102]}
        for i in range(2)
    ]
    collate = TaskCollator(make_collator("causal_lm", tokenizer))
    trainer = CompletionLossTrainer.__new__(CompletionLossTrainer)

    def loss_for(weights):
        batch = collate([{**e, "loss_weights": w} for e, w in zip(examples, weights)])
        return trainer.compute_loss(model, batch)

    one, two = (loss_for([1.0, 0.0]), loss_for([0.0, 1.0]))
    assert loss_for([1.0, 1.0]).item() == pytest.approx((one + two).item(), rel=1e-5)
    assert loss_for([2.0, 1.0]).item() == pytest.approx((2 * one + two).item(), rel=1e-5)
    model.zero_grad()
    loss_for([0.0, 1.0]).backward()
    only_second = model.get_input_embeddings().weight.grad[2000].abs().sum()
    assert only_second == 0  # an example of weight 0 sends no gradient through its own tokens


def test_text_to_text_mixture_trains_and_scores_every_task(tiny_decoder, tmp_path):
    run = pipeline.train(mixture_config(tiny_decoder, tmp_path, eval_only=["cola"], balanced_batches=True))
    state = run.state()
    assert state["state"] == "complete"
    assert state["plan"][0]["tasks"]["sst2"] == {"available": 24, "per_epoch": 24, "share": 0.75}
    evaluation = json.loads(run.eval_path.read_text())
    assert set(evaluation["tasks"]) == {"sst2", "rte", "cola"}
    assert evaluation["tasks"]["cola"]["held_out"] and not evaluation["tasks"]["sst2"]["held_out"]
    for task in evaluation["tasks"].values():
        assert task["base"]["examples"] == task["tuned"]["examples"] == 4
    logged = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    assert any("eval_sst2_loss" in entry for entry in logged) and any("eval_rte_loss" in entry for entry in logged)
    card = (run.path / "README.md").read_text()
    assert "cola (held out)" in card and "sst2 24/24 per epoch (75.0%)" in card
    assert main(["eval", str(run.path), "--suite", "glue-mini", "--limit", "2", "--samples", "10"]) == 0


def test_multi_head_encoder_trains_one_head_per_task(multi_head_run):
    run = multi_head_run
    evaluation = json.loads(run.eval_path.read_text())
    assert set(evaluation["tasks"]) == {"sst2", "rte"}
    assert json.loads((run.model_dir / "multihead.json").read_text())["tasks"] == {
        "sst2": ["positive", "negative"],
        "rte": ["entailment", "not_entailment"],
    }
    losses = [e["loss"] for e in map(json.loads, run.metrics_path.read_text().splitlines()) if "loss" in e]
    assert losses


def test_a_one_task_multi_head_run_keeps_its_last_weights(tiny_encoder, tmp_path):
    """One task's validation set is a plain list, yet a multi-head model has no best checkpoint the Trainer reloads."""
    run = pipeline.train(
        mixture_config(
            tiny_encoder,
            tmp_path,
            objective="multi_head",
            method="full",
            tasks=[{"task": "sst2", "max_examples": 8}],
        )
    )
    assert run.state()["state"] == "complete" and run.state()["best_step"] is None
    assert any("eval_loss" in entry for entry in map(json.loads, run.metrics_path.read_text().splitlines()))


def test_task_adapters_train_one_adapter_per_task_and_route_by_name(tiny_decoder, tmp_path):
    config = mixture_config(tiny_decoder, tmp_path, objective="task_adapters", shared_adapter=True, eval_only=["cola"])
    run = pipeline.train(config)
    manifest = json.loads((run.model_dir / "task_adapters.json").read_text())
    assert manifest == {"tasks": ["sst2", "rte"], "shared": True}
    for adapter in ("sst2", "rte", "shared"):
        assert (run.model_dir / adapter / "adapter_model.safetensors").exists()
    evaluation = json.loads(run.eval_path.read_text())
    assert evaluation["tasks"]["cola"]["held_out"]
    assert evaluation["architecture"] == "task_adapters"


def test_compare_mixtures_puts_specialists_and_the_mixture_in_one_table(tiny_decoder, tmp_path):
    config_path = tmp_path / "mix.yaml"
    config_path.write_text(
        json.dumps(mixture_config(tiny_decoder, tmp_path / "unused", eval_only=["cola"]).model_dump(mode="json"))
    )
    assert (
        main(["compare", str(config_path), "--mixtures", "sst2+rte,sst2", "--output-dir", str(tmp_path / "cmp")]) == 0
    )
    summary = json.loads((tmp_path / "cmp" / "tiny-mix" / "summary.json").read_text())
    rows = {row["variant"]: row for row in summary["variants"]}
    assert set(rows) == {"sst2", "sst2+rte"} and all(r["status"] == "ok" for r in rows.values())
    assert set(rows["sst2"]["scores"]) == {"sst2", "cola"} and set(rows["sst2+rte"]["scores"]) == {
        "sst2",
        "rte",
        "cola",
    }
    assert rows["sst2"]["base"] == {}  # the base model was scored once, by the first mixture
    assert set(summary["base"]) == {"sst2", "rte", "cola"} and all(v is not None for v in summary["base"].values())
    assert [t for t, info in summary["tasks"].items() if info["held_out"]] == ["cola"]
    table = (tmp_path / "cmp" / "tiny-mix" / "summary.md").read_text()
    assert "| base model |" in table and "cola (mcc, held out)" in table
    assert main(["compare", str(config_path), "--mixtures", "sst2+nope"]) == 2


def test_a_mixture_run_asks_which_task_a_command_means(multi_head_run, tmp_path):
    from tunelab.tasks import TaskError

    run = multi_head_run
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps({"text": "a fine film"}) + "\n")
    with pytest.raises(TaskError, match="trained on sst2, rte; say which task with --task NAME"):
        run_commands.predict_run(run, str(inputs), str(tmp_path / "out.jsonl"))
    with pytest.raises(TaskError, match="--task"):
        run_commands.merge_run(run, tmp_path / "merged")
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "merged").exists()
