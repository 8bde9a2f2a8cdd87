"""The `tunelab` command: parse arguments, build the config, call one pipeline function, print."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tunelab.config import ConfigError, load_config


def _cmd_models_list(args) -> None:
    from tunelab.models.registry import REGISTRY, is_installed, is_prepared

    print(f"{'name':24} {'family':8} {'installed':9} {'prepared':9} description")
    for model in REGISTRY.values():
        installed = is_installed(model)
        prepared = ("yes" if is_prepared(model) else "no") if model.needs_prepare else "n/a"
        print(f"{model.name:24} {model.family:8} {'yes' if installed else 'no':9} {prepared:9} {model.description}")
    print("\nAny Hugging Face hub id or local model directory also works as model.name.")


def _cmd_models_prepare(args) -> None:
    from tunelab.models.loading import prepare
    from tunelab.models.registry import REGISTRY

    if args.name not in REGISTRY:
        raise ConfigError(f"unknown model '{args.name}'; registry models: {', '.join(REGISTRY)}")
    print(f"{args.name}: ready at {prepare(args.name, force=args.force)}")


def _cmd_data_check(args) -> None:
    from tunelab.data.readers import read_file
    from tunelab.data.splits import label_set
    from tunelab.data.validate import check_records, enforce

    config = load_config(args.config, [f"task={args.task}", *args.overrides])
    records = read_file(args.file)
    labels = label_set(records, config, args.file) if config.task == "classification" else None
    valid = enforce(check_records(records, config.task, config.data, labels), args.file, config.data.skip_invalid)
    print(f"{args.file}: {len(valid)} valid records for task {config.task}" + (f", labels {labels}" if labels else ""))


def _cmd_train(args) -> None:
    from tunelab import pipeline
    from tunelab.runs import RunDir

    if args.resume:
        run = RunDir(args.resume)
        if run.state().get("state") == "complete":
            raise ConfigError(f"run {run.path} is already complete; nothing to resume")
        config = run.config()
        run = pipeline.train(config, resume=run)
    else:
        if not args.config:
            raise ConfigError("give a config file (e.g. configs/sentiment-minilm-lora.yaml) or --resume RUN_DIR")
        run = pipeline.train(load_config(args.config, args.overrides))
    print((run.path / "README.md").read_text(encoding="utf-8"))
    print(f"run complete: {run.path}")


def _cmd_eval(args) -> None:
    from tunelab import pipeline
    from tunelab.runs import RunDir, write_json

    metrics = pipeline.evaluate_run(RunDir(args.run), args.data)
    print(json.dumps(metrics, indent=2))
    if args.output:
        write_json(Path(args.output), metrics)


def _named_adapters(items: list[str]) -> dict:
    """['a=runs/x', 'runs/y'] -> {'a': RunDir('runs/x'), 'y': RunDir('runs/y')}: names key the predictions."""
    from tunelab.runs import RunDir

    adapters: dict = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item.rstrip("/")).name, item
        if name in adapters:
            raise ConfigError(f"two --adapter runs are named '{name}'; name them with --adapter NAME=RUN_DIR")
        adapters[name] = RunDir(path)
    return adapters


def _cmd_predict(args) -> None:
    from tunelab import pipeline
    from tunelab.runs import RunDir

    if bool(args.run) == bool(args.adapter):
        raise ConfigError("give either one RUN_DIR, or one or more --adapter RUN_DIR to share one base model")
    if args.run:
        count = pipeline.predict_run(RunDir(args.run), args.input, args.output)
    else:
        count = pipeline.predict_with_adapters(_named_adapters(args.adapter), args.input, args.output)
    print(f"wrote {count} predictions to {args.output}")


def _cmd_merge(args) -> None:
    from tunelab import pipeline
    from tunelab.runs import RunDir

    print(f"merged model written to {pipeline.merge_run(RunDir(args.run), Path(args.output))}")


def _cmd_compare(args) -> None:
    from tunelab.compare import compare_methods, parse_learning_rates

    config = load_config(args.config, args.overrides)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    summary = compare_methods(config, methods, Path(args.output_dir), parse_learning_rates(args.learning_rates),
                              source=args.config)
    print(f"\ncomparison written to {summary}")


def _cmd_demo(args) -> None:
    from tunelab.demo import run_demo

    run_demo(args.output_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunelab", description="Fine-tune language models and measure what it did.")
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="offline model registry").add_subparsers(dest="models_command", required=True)
    models.add_parser("list", help="registry models and whether each is installed/prepared").set_defaults(func=_cmd_models_list)
    prepare = models.add_parser("prepare", help="one-time GGUF -> safetensors conversion into $TUNELAB_HOME")
    prepare.add_argument("name")
    prepare.add_argument("--force", action="store_true", help="convert again even if prepared")
    prepare.set_defaults(func=_cmd_models_prepare)

    data = commands.add_parser("data", help="data tools").add_subparsers(dest="data_command", required=True)
    check = data.add_parser("check", help="validate a data file; errors name file:line and field")
    check.add_argument("file")
    check.add_argument("--task", default="classification", choices=["classification", "causal_lm", "seq2seq"])
    check.add_argument("--config", help="take field mapping (data.*) from this run config")
    check.add_argument("overrides", nargs="*", help="key=value, e.g. data.text_field=sentence")
    check.set_defaults(func=_cmd_data_check)

    train = commands.add_parser("train", help="fine-tune from a YAML config")
    train.add_argument("config", nargs="?")
    train.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. training.epochs=1")
    train.add_argument("--resume", metavar="RUN_DIR", help="finish an interrupted run from its last checkpoint")
    train.set_defaults(func=_cmd_train)

    evaluate = commands.add_parser("eval", help="score a run's tuned model on labelled data")
    evaluate.add_argument("run")
    evaluate.add_argument("--data", required=True)
    evaluate.add_argument("--output", help="also write the metrics to this JSON file")
    evaluate.set_defaults(func=_cmd_eval)

    predict = commands.add_parser("predict", help="run a tuned model (or several adapters on one base) over a JSONL/CSV/Parquet file")
    predict.add_argument("run", nargs="?", help="a complete run directory")
    predict.add_argument("--adapter", action="append", metavar="[NAME=]RUN_DIR",
                         help="a PEFT adapter run; repeat to switch adapters on one base model loaded once "
                              "(predictions are keyed by NAME, default the run directory's name)")
    predict.add_argument("--input", required=True)
    predict.add_argument("--output", required=True)
    predict.set_defaults(func=_cmd_predict)

    merge = commands.add_parser("merge", help="write a standalone model with the run's update folded in (lora family, ia3, bitfit, head, full)")
    merge.add_argument("run")
    merge.add_argument("--output", required=True, help="new folder for the merged model (safetensors + tokenizer)")
    merge.set_defaults(func=_cmd_merge)

    compare = commands.add_parser("compare", help="train one config with several methods; table, JSON and plot of cost vs gain")
    compare.add_argument("config")
    compare.add_argument("overrides", nargs="*", help="key.sub=value overrides applied to every method's run")
    compare.add_argument("--methods", default="full,head,bitfit,lora,adapter,prefix,prompt,ia3",
                         help="comma-separated method names (default: %(default)s)")
    compare.add_argument("--learning-rates", default="", metavar="M=LR,...",
                         help="per-method learning rates, e.g. full=3e-5,lora=1e-3; others use the method's default")
    compare.add_argument("--output-dir", default="compare", help="the comparison goes to OUTPUT_DIR/<config name>")
    compare.set_defaults(func=_cmd_compare)

    demo = commands.add_parser("demo", help="LoRA-tune minilm-l6 on the bundled sentiment data; print base vs tuned")
    demo.add_argument("--output-dir", default="runs")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may follow options (`data check F --task T data.labels=[a,b]`), which argparse
    # cannot express with two positionals, so they are collected here.
    if extra and (not hasattr(args, "overrides") or not all("=" in item and not item.startswith("-") for item in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    from tunelab.data.readers import DataError
    from tunelab.methods import MethodError
    from tunelab.models.registry import ModelNotAvailable
    from tunelab.runs import RunError

    try:
        args.func(args)
    except (ConfigError, DataError, RunError, ModelNotAvailable, MethodError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
