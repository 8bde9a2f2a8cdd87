"""A reward model as a judge of other models' answers: the reward-model win rate of the preference issue's
evidence (`eval.judge: RUN`).

`RewardJudge.load(run)` reads a reward run (data.kind: reward) back; `.score(prompts, answers)` scores each answer
after its prompt as the reward model read its training pairs (its chat template, or its transcript), and
`win_rate` is the share of prompts whose tuned answer the judge scores above the base's, a tie counting half, with
a bootstrap interval. After training, a run with `eval.judge` set judges the base's and the tuned model's greedy
answers to its test prompts (`judge_answers`), which its evaluation generated anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.config import ConfigError, RunConfig
from tunelab.eval.bootstrap import Interval, bootstrap_ci
from tunelab.eval.gain import ScoredTasks
from tunelab.eval.metrics import get_metric
from tunelab.eval.rewards import reward_scores
from tunelab.kinds import kind_of_run
from tunelab.kinds.reward import conversation_ids
from tunelab.models.loading import on_device
from tunelab.runs import RunDir
from tunelab.train.objectives import objective_of
from tunelab.train.trained import load_run

Messages = list[dict[str, Any]]


@dataclass
class RewardJudge:
    """A reward model ready to score answers: its model, tokenizer, and the longest sequence it reads."""

    name: str
    model: Any
    tokenizer: Any
    max_length: int
    batch_size: int = 32

    @classmethod
    def load(cls, run_dir: str | Path) -> RewardJudge:
        """The reward model of a complete reward run, on the GPU when there is one."""
        run = RunDir(run_dir)
        _check_reward_run(run)
        loaded = load_run(run)
        config = loaded.config
        return cls(
            str(run.path),
            on_device(loaded.model),
            loaded.tokenizer,
            config.data.max_length,
            config.training.eval_batch_size,
        )

    def score(self, prompts: list[Messages], answers: list[str]) -> list[float]:
        """Each answer's score as the assistant's reply to its prompt (a conversation, OpenAI messages); the
        earliest tokens of a conversation longer than the reward model's data.max_length are cut, never the
        answer's."""
        sequences = [
            conversation_ids(
                prompt + [{"role": "assistant", "content": answer}], None, self.tokenizer, self.max_length
            )[0]
            for prompt, answer in zip(prompts, answers, strict=True)
        ]
        return reward_scores(self.model, self.tokenizer, sequences, self.batch_size)


def win_rate(
    judge: RewardJudge,
    prompts: list[Messages],
    base_answers: list[str],
    tuned_answers: list[str],
    samples: int = 1000,
    seed: int = 0,
) -> Interval:
    """The share (0-100) of prompts whose tuned answer `judge` scores above the base's, a tie counting half, with a
    percentile-bootstrap 95% interval over the prompts."""
    return _win_rate(judge.score(prompts, tuned_answers), judge.score(prompts, base_answers), samples, seed)


def _win_rate(tuned: list[float], base: list[float], samples: int, seed: int) -> Interval:
    return bootstrap_ci(get_metric("win_rate"), list(zip(tuned, base)), None, samples, seed)


def judge_answers(
    judge: RewardJudge,
    tasks: ScoredTasks,
    base: dict[str, dict],
    tuned: dict[str, dict],
    samples: int = 1000,
    seed: int = 0,
) -> tuple[dict, list[dict]]:
    """The judge's verdict on each task both models answered by generating (`base` and `tuned`: their scores of
    each task, `score_tasks`, whose `answers` hold the answers in record order): the tuned model's win rate with its
    interval and both models' mean scores (eval.json's `judge`), and one row per prompt with both answers and their
    scores."""
    report: dict = {"judge": judge.name, "tasks": {}}
    rows = []
    for name, (spec, records, _) in tasks.items():
        base_answers, tuned_answers = base[name].get("answers"), tuned[name].get("answers")
        if not base_answers or not tuned_answers:
            continue  # a task a model did not answer by generating (skipped, or scored otherwise)
        prompts = [spec.handler.prompt_messages(spec, record) for record in records]
        base_scores, tuned_scores = judge.score(prompts, base_answers), judge.score(prompts, tuned_answers)
        report["tasks"][name] = {
            "examples": len(records),
            "win_rate": _win_rate(tuned_scores, base_scores, samples, seed).as_dict(),
            "base_score": sum(base_scores) / len(base_scores),
            "tuned_score": sum(tuned_scores) / len(tuned_scores),
        }
        rows += [
            {"task": name, "index": i, "base": b, "tuned": t, "base_score": bs, "tuned_score": ts}
            for i, (b, t, bs, ts) in enumerate(zip(base_answers, tuned_answers, base_scores, tuned_scores))
        ]
    return report, rows


def check_judge(config: RunConfig) -> None:
    """Refuse, before anything loads, an `eval.judge` that is not a complete reward run, or a run it cannot judge:
    one whose model answers through a head or scores raw text (no answers to judge), or that scores no base model
    to compare its answers with."""
    if config.eval.judge is None:
        return
    if objective_of(config).answers_by_head or (config.mixture is None and not kind_of_run(config).prompted):
        raise ConfigError(
            "eval.judge scores a generating run's answers; this run generates none (its model answers through a "
            "head, or scores raw text): drop eval.judge"
        )
    if "zero_shot" not in config.eval.baselines:
        raise ConfigError(
            "eval.judge compares the tuned model's answers with the base model's; keep zero_shot in eval.baselines"
        )
    _check_reward_run(RunDir(config.eval.judge))


def _check_reward_run(run: RunDir) -> None:
    """A complete run whose model is a reward model; ConfigError saying what to give otherwise."""
    if not run.state_path.exists():
        raise ConfigError(
            f"eval.judge {run.path} is not a run directory; give a reward-model run (trained with data.kind: reward)"
        )
    run.require_complete()
    config = run.config()
    if not objective_of(config).scores_answers:
        raise ConfigError(
            f"eval.judge {run.path} is a {config.data.kind} run, not a reward model; give a run trained with "
            "data.kind: reward"
        )
