"""Which checkpoint a run returns to: the best validation score, ties going to the lower validation loss."""

from __future__ import annotations

from transformers import Trainer, TrainerState, TrainingArguments

from tunelab.train.trainer import PlannedOrder


class Validations(PlannedOrder, Trainer):
    """The Trainer's choice of best checkpoint alone, fed one validation at a time (no model needed)."""

    def __init__(self, output_dir: str):
        self.args = TrainingArguments(
            output_dir=output_dir,
            eval_strategy="steps",
            save_strategy="steps",
            load_best_model_at_end=True,
            metric_for_best_model="accuracy",
            greater_is_better=True,
            use_cpu=True,
            report_to=[],
        )
        self.state = TrainerState()

    def validate(self, step: int, accuracy: float, loss: float) -> bool:
        self.state.global_step = step
        metrics = {"eval_accuracy": accuracy, "eval_loss": loss}
        self.state.log_history.append({**metrics, "step": step})
        return self._determine_best_metric(metrics, None)


def test_a_tied_score_with_a_lower_validation_loss_becomes_the_best_checkpoint(tmp_path):
    """The demo's seed 2: accuracy tied at 81.25 over five epochs; the first one, kept before, scored 6 points
    below the later ones on the test reviews."""
    trainer = Validations(str(tmp_path))
    assert trainer.validate(21, 60.42, 0.69) and trainer.state.best_global_step == 21
    assert trainer.validate(42, 81.25, 0.48) and trainer.state.best_global_step == 42
    assert trainer.validate(63, 81.25, 0.46) and trainer.state.best_global_step == 63
    assert trainer.validate(84, 81.25, 0.43) and trainer.state.best_global_step == 84
    assert not trainer.validate(105, 81.25, 0.53) and trainer.state.best_global_step == 84
    assert not trainer.validate(126, 79.17, 0.30) and trainer.state.best_global_step == 84
    assert trainer.validate(147, 83.33, 0.60) and trainer.state.best_global_step == 147
