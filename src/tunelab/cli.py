"""The `tunelab` command: parse arguments, build the config, call one pipeline function, print."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from tunelab.config import METHOD_TRAITS, ConfigError, load_config, method_names
from tunelab.config.vocabulary import OLD_TASK_TYPES
from tunelab.errors import TunelabError
from tunelab.serve.settings import default_threads


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


def _data_config(args):
    """The config a data file is read with: --config's (or the defaults) with --kind, or the old --task-type."""
    from tunelab.resolve import check_config

    chosen = [f"data.kind={args.kind}"] if args.kind else []
    chosen += [f"task_type={args.task_type}"] if args.task_type else []
    config = load_config(args.config, [*chosen, *args.overrides])
    check_config(config)
    return config


def _is_run_config(path: str) -> bool:
    return Path(path).suffix in (".yaml", ".yml")


def _check_run_data(args) -> None:
    """`tunelab data check CONFIG`: the run's own splits, as its training reads them."""
    from tunelab import data_checks
    from tunelab.data.report import render_report
    from tunelab.resolve import check_config

    if args.config or args.against or args.suite:
        raise ConfigError(
            f"{args.file} is a run config: its own validation and test splits and eval.retention_suite are what its "
            "training data is compared with; drop --config, --against and --suite (or check a data file)"
        )
    config = load_config(args.file, [*([f"data.kind={args.kind}"] if args.kind else []), *args.overrides])
    check_config(config)
    report, tasks = data_checks.run_data_report(config)
    print(render_report(report))
    if args.show_masks:  # a `data:` run's one task (show_masks refuses any run but a conversational one)
        print(data_checks.show_masks(config, next(iter(tasks.trained.values())).train, args.show_masks))


def _cmd_data_check(args) -> None:
    from tunelab import data_checks
    from tunelab.data.report import render_report

    if _is_run_config(args.file):
        _check_run_data(args)
        return
    config = _data_config(args)
    valid, labels = data_checks.read_checked(config, args.file)
    print(
        f"{args.file}: {len(valid)} valid records for data.kind {config.data.kind}"
        + (f", labels {labels}" if labels else "")
    )
    print(render_report(data_checks.report_data_file(config, args.file, valid, labels, args.against, args.suite)))
    if args.show_masks:
        print(data_checks.show_masks(config, valid, args.show_masks))


def _cmd_data_clean(args) -> None:
    from tunelab import data_checks
    from tunelab.data.report import render_report

    config = _data_config(args)
    report, written = data_checks.clean_data_file(
        config, args.file, Path(args.output), args.dedup, args.against, args.suite
    )
    print(render_report(report))
    cleaning = report["cleaning"]
    print(
        f"wrote {written['cleaned']} ({cleaning['kept']} records); {cleaning['removed']} removed, each with why, "
        f"in {written['removed']}; report in {written['report']} (and .md)"
    )


def _torchrun(processes: int, arguments: list[str]) -> int:
    """Run `tunelab ARGUMENTS` as `processes` ranks under torchrun on this machine; returns torchrun's exit status.

    The ranks write to this terminal directly, so their output streams as it comes.
    """
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(processes),
        "-m",
        "tunelab",
        *arguments,
    ]
    print(f"launching {processes} processes: {shlex.join(command)}", flush=True)
    launcher = subprocess.Popen(command)
    try:
        return launcher.wait()
    except KeyboardInterrupt:  # the ranks got the Ctrl-C too: let torchrun stop them and mark the run interrupted
        return launcher.wait()


def _cmd_train(args) -> int | None:
    from tunelab import distributed, pipeline
    from tunelab.runs import RunDir, RunInterrupted

    if args.nproc < 1:
        raise ConfigError(f"--nproc {args.nproc}: give the number of training processes, 1 or more")
    if args.nproc > 1 and distributed.world_size() > 1:
        raise ConfigError(
            f"this process was already started as one of {distributed.world_size()} by torchrun or "
            "accelerate launch; drop --nproc (the launcher's own option sets the process count)"
        )
    resume = RunDir(args.resume) if args.resume else None
    if resume:
        given = " ".join(filter(None, [args.config, *args.overrides]))
        if given:
            raise ConfigError(
                f"--resume {args.resume} continues the run with its own config ({resume.config_path}), so it takes "
                f"no config or overrides: drop '{given}', or start a new run with `tunelab train {given}`"
            )
        if resume.state().get("state") == "complete":
            raise ConfigError(f"run {resume.path} is already complete; nothing to resume")
        config = resume.config()
    else:
        if not args.config:
            raise ConfigError("give a config file (e.g. configs/sentiment-minilm-lora.yaml) or --resume RUN_DIR")
        config = load_config(args.config, args.overrides)
        if config.sweep is not None:
            print("note: the sweep: section is for `tunelab sweep`; training the config as it is, without it")
            config = config.model_copy(update={"sweep": None})
    if args.nproc > 1:  # the config was checked once, here, before N processes each load it again
        return _torchrun(
            args.nproc, ["train", "--resume", args.resume] if resume else ["train", args.config, *args.overrides]
        )
    try:
        run = pipeline.train(config, resume=resume)
    except RunInterrupted as stop:  # Ctrl-C or SIGTERM: one line saying where it stopped, not a traceback
        if distributed.is_main_process():
            print(stop.line)
        return stop.exit_status
    if distributed.is_main_process():  # the other ranks return as soon as training ends, before the card exists
        print((run.path / "README.md").read_text(encoding="utf-8"))
        print(f"run complete: {run.path}")
    return None


def _cmd_eval(args) -> None:
    from tunelab import run_commands
    from tunelab.eval import commands
    from tunelab.runs import RunDir

    if bool(args.data) == bool(args.suite):
        raise ConfigError(
            "give either --suite NAME (any model or run) or --data FILE (a run, with its own field names)"
        )
    if args.shots < 0:
        raise ConfigError(f"--shots {args.shots}: give the demonstrations per prompt, 0 (zero-shot) or more")
    if args.suite:
        commands.evaluate_suite(
            args.target,
            args.suite,
            args.limit,
            args.output,
            args.seed,
            args.samples,
            args.batch_size,
            args.shots,
            args.scoring,
        )
        return
    report = run_commands.evaluate_run(
        RunDir(args.target),
        args.data,
        Path(args.output) if args.output else None,
        args.samples,
        args.seed,
        args.task,
        args.shots,
        args.scoring,
        args.limit,
        args.batch_size,
    )
    print(report.with_suffix(".md").read_text(encoding="utf-8"))
    print(f"report written to {report} (and .md, .outputs.jsonl)")


def _cmd_judge(args) -> None:
    from tunelab import pipeline
    from tunelab.eval.bootstrap import format_interval
    from tunelab.runs import RunDir

    report = pipeline.judge_run(RunDir(args.run), args.by)
    for task, verdict in report["tasks"].items():
        print(
            f"{task}: the tuned model's answers win {format_interval(verdict['win_rate'])} % against the base's "
            f"({verdict['examples']} prompts; mean reward {verdict['tuned_score']:.3f} vs {verdict['base_score']:.3f})"
        )


def _cmd_forgetting(args) -> None:
    from tunelab.eval import commands

    commands.forgetting(
        args.base,
        args.tuned,
        args.suite,
        args.limit,
        args.output,
        args.seed,
        args.samples,
        args.batch_size,
        args.scoring,
    )


def _cmd_robustness(args) -> None:
    from tunelab.eval import commands

    commands.robustness(
        args.target,
        args.task,
        args.perturbations,
        args.severity,
        args.limit,
        args.output,
        args.seed,
        args.samples,
        args.batch_size,
    )


def _cmd_bias(args) -> None:
    from tunelab.eval import commands

    commands.bias(
        args.target, args.task, args.attributes, args.limit, args.output, args.seed, args.samples, args.batch_size
    )


def _cmd_tasks_list(args) -> None:
    from tunelab.tasks import builtin_suites, builtin_tasks, load_task
    from tunelab.tasks.suite import load_suite

    for name in builtin_tasks():
        spec = load_task(name)
        print(f"{spec.name:16} {spec.kind:18} {spec.primary_metric:12} {spec.description}")
    print("\nsuites (tunelab eval TARGET --suite NAME):")
    for name in builtin_suites():
        suite = load_suite(name)
        tasks = ", ".join(f"{e.task} ({e.limit or 'all'})" for e in suite.tasks)
        print(f"{suite.name:16} {tasks}")


def _cmd_tasks_show(args) -> None:
    from tunelab.data.task_records import load_records
    from tunelab.tasks import load_task

    spec = load_task(args.name)
    print(
        f"{spec.name} ({spec.kind}): {spec.description}\nsource: {spec.source}, split {spec.split}; metrics: {', '.join(spec.metrics)}"
    )
    for i, record in enumerate(load_records(spec, limit=2, seed=args.seed)):
        print(f"\n--- example {i + 1} ({record.where}) ---")
        if spec.templates:
            print(f"[prompt]\n{spec.prompt(record, args.template)}\n[target]\n{spec.target(record)}")
        else:
            print(str(record.fields[spec.text_field])[:500])


def _cmd_human(args) -> None:
    from tunelab.eval import human
    from tunelab.runs import RunDir

    if args.human_command == "export":
        path = human.export_sheet(
            RunDir(args.run),
            RunDir(args.run_b) if args.run_b else None,
            args.n,
            Path(args.output),
            args.seed,
            args.task,
        )
        print(f"wrote blind sheet {path}; rate it with: tunelab human rate {path.stem} --rater NAME")
    elif args.human_command == "rate":
        human.rate_interactive(args.sheet, args.rater)
    elif args.human_command == "import":
        print(f"imported {human.import_csv(Path(args.csv))} ratings from {args.csv}")
    else:
        print(human.render_report(human.report(args.sheet)))


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
    from tunelab import run_commands
    from tunelab.runs import RunDir

    if bool(args.run) == bool(args.adapter):
        raise ConfigError("give either one RUN_DIR, or one or more --adapter RUN_DIR to share one base model")
    if (args.overrides or "=" in (args.run or "")) and (args.adapter or args.engine == "onnx"):
        raise ConfigError(
            "data.* overrides apply to one RUN_DIR with --engine torch, not to --adapter or --engine onnx"
        )
    if args.engine == "onnx":
        if args.adapter:
            raise ConfigError("--engine onnx predicts from one ONNX export folder; --adapter is for --engine torch")
        from tunelab.export.onnx_predict import predict_onnx

        count = predict_onnx(Path(args.run), args.input, args.output, args.task)
    elif args.run:
        count = run_commands.predict_run(RunDir(args.run), args.input, args.output, args.task, args.overrides)
    else:
        count = run_commands.predict_with_adapters(_named_adapters(args.adapter), args.input, args.output)
    print(f"wrote {count} predictions to {args.output}")


def _cmd_merge(args) -> None:
    from tunelab import run_commands
    from tunelab.runs import RunDir

    print(f"merged model written to {run_commands.merge_run(RunDir(args.run), Path(args.output), args.task)}")


def _cmd_export(args) -> None:
    from tunelab.export import EXPORT_FORMATS, export_run
    from tunelab.runs import RunDir

    given = {option.name: getattr(args, option.name) for fmt in EXPORT_FORMATS.values() for option in fmt.OPTIONS}
    written = export_run(args.format, RunDir(args.run), Path(args.output), args.task, **given)
    print(f"{args.format} export written to {written}")


def _cmd_compare(args) -> None:
    from tunelab.compare import (
        compare,
        method_variants,
        mixture_variants,
        parse_learning_rates,
        parse_mixtures,
        parse_sizes,
        size_variants,
    )

    config = load_config(args.config, args.overrides)
    if args.mixtures and args.sizes:
        raise ConfigError("give --mixtures or --sizes, not both: one comparison changes one thing")
    if args.mixtures:
        variants, kind = mixture_variants(config, parse_mixtures(args.mixtures)), "mixture"
    elif args.sizes:
        variants, kind = size_variants(config, parse_sizes(args.sizes)), "size"
    else:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        variants, kind = method_variants(config, methods, parse_learning_rates(args.learning_rates)), "method"
        if args.methods == COMPARE_METHODS:
            print(
                f"no --methods given: training all {len(variants)} methods, {len(variants)} models "
                f"({', '.join(methods)}); name fewer with e.g. --methods full,lora",
                flush=True,
            )
    print(f"\ncomparison written to {compare(config, variants, Path(args.output_dir), kind, source=args.config)}")


def _cmd_sweep(args) -> None:
    from tunelab.sweep import sweep

    if args.trials is not None and args.trials < 1:
        raise ConfigError(f"--trials {args.trials}: give the finished trials the study should hold, 1 or more")
    if args.minutes is not None and args.minutes <= 0:
        raise ConfigError(f"--minutes {args.minutes}: give a time above 0")
    config = load_config(args.config, args.overrides)
    directory = Path(args.output) if args.output else Path("sweeps") / config.name
    table = sweep(config, directory, args.trials, args.minutes, source=args.config)
    print("\n" + table.read_text(encoding="utf-8"))
    if (directory / "best.yaml").exists():
        print(f"best config: {directory / 'best.yaml'} (train it with `tunelab train {directory / 'best.yaml'}`)")


def _cmd_ui(args) -> None:
    from tunelab.ui.app import run_ui

    if args.threads < 1:
        raise ConfigError(f"--threads {args.threads}: give a number of 1 or more")
    token = args.token or os.environ.get("TUNELAB_UI_TOKEN") or None
    run_ui(args.runs or [], args.host, args.port, token, threads=args.threads)


def _cmd_serve(args) -> None:
    from tunelab.serve.app import run_server
    from tunelab.serve.settings import ServeSettings

    for name in (
        "max_batch",
        "queue_size",
        "max_body_bytes",
        "max_prompt_tokens",
        "max_tokens_cap",
        "default_max_tokens",
        "threads",
    ):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(args, name)}: give a number of 1 or more")
    if args.prefix_cache_tokens < 0:
        raise ConfigError(f"--prefix-cache-tokens {args.prefix_cache_tokens}: give 0 (off) or more")
    if args.timeout <= 0 or args.batch_window_ms < 0:
        raise ConfigError("--timeout must be above 0 seconds and --batch-window-ms at least 0")
    if not args.allow_adapter_loading and (args.adapter_root is not None or args.max_adapters is not None):
        raise ConfigError("--adapter-root and --max-adapters apply only with --allow-adapter-loading")
    settings = ServeSettings(
        api_key=args.api_key or os.environ.get("TUNELAB_API_KEY") or None,
        max_batch=args.max_batch,
        batch_window_ms=args.batch_window_ms,
        queue_size=args.queue_size,
        max_body_bytes=args.max_body_bytes,
        max_prompt_tokens=args.max_prompt_tokens,
        max_tokens_cap=args.max_tokens_cap,
        default_max_tokens=args.default_max_tokens,
        timeout_s=args.timeout,
        batching=args.batching,
        prefix_cache_tokens=args.prefix_cache_tokens,
        fold_adapters=args.fold_adapters,
        threads=args.threads,
        allow_adapter_loading=args.allow_adapter_loading,
        adapter_root=args.adapter_root,
        max_adapters=ServeSettings.max_adapters if args.max_adapters is None else args.max_adapters,
    )
    run_server(args.targets, args.host, args.port, settings)


def _cmd_demo(args) -> None:
    from tunelab.demo import run_demo

    run_demo(args.output_dir)


THREADS_HELP = (
    "CPU threads for the models' work (default: half this machine's cores, so a training run on the same machine "
    "keeps the rest; give the core count on a machine that only serves)"
)
TASK_HELP = (
    "for a multi-task run: the task whose template, head or adapter answers (one of its tasks, or any built-in "
    "task or task YAML); a one-task run answers its own task"
)


def _report_options(parser: argparse.ArgumentParser, limit: int | None = None) -> None:
    parser.add_argument(
        "--limit", type=int, default=limit, help="at most this many examples per task, drawn with --seed"
    )
    parser.add_argument("--seed", type=int, default=0, help="example draw and bootstrap seed")
    parser.add_argument("--samples", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    parser.add_argument(
        "--batch-size",
        type=int,
        help="examples per forward pass or generation batch (default: a run's training.eval_batch_size, 32 for a model)",
    )


def _scoring_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scoring",
        choices=["generate", "loglik"],
        help="how a generating model answers classification tasks: generate (map its answer to a label by the "
        "label words) or loglik (rank classification: the label whose first word is most likely after the "
        "prompt); default each task's own scoring",
    )


def _data_file_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="the data file: JSONL, JSON, CSV or Parquet (data check: or a run config)")
    from tunelab.kinds import KINDS

    parser.add_argument(
        "--kind",
        choices=list(KINDS),
        help="the kind of example the records are (data.kind; default the config's, else classification)",
    )
    parser.add_argument(
        "--task-type",
        "--task",
        dest="task_type",
        choices=list(OLD_TASK_TYPES),
        help="the old spelling of --kind, read as it (causal_lm and seq2seq: generation)",
    )
    parser.add_argument(
        "--config", help="take field mapping (data.*) and model (for token lengths) from this run config"
    )
    parser.add_argument(
        "--against",
        action="append",
        default=[],
        metavar="FILE",
        help="a validation or test file to compare with (leakage); repeat for several",
    )
    parser.add_argument(
        "--suite",
        action="append",
        default=[],
        metavar="NAME",
        help=f"a suite ({_suites()}, or a suite YAML) whose tasks' evaluated records to compare with "
        "(contamination); repeat for several",
    )
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. data.text_field=sentence")


class _ShowDefaults(argparse.HelpFormatter):
    """Ends every option's help with its default, so `--help` says what leaving an option out does. A flag, an
    empty list and a None default add nothing: for those the help itself says what happens without it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        shown = action.help or ""
        if "%(default)" in shown or action.nargs == 0 or action.default in (None, "", [], argparse.SUPPRESS):
            return shown
        return f"{shown} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """tunelab's parser: sub-command parsers are made by `add_parser` as this class, so every `--help` shows the
    defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _ShowDefaults)
        super().__init__(*args, **kwargs)


def _suites() -> str:
    """The built-in suites, as help text lists them: read from the suite folder, so a new suite shows itself."""
    from tunelab.tasks import builtin_suites

    return ", ".join(builtin_suites())


COMPARE_METHODS = ",".join(name for name, traits in METHOD_TRAITS.items() if not traits.lora_family or name == "lora")
"""What `tunelab compare` trains without --methods: one model per method, lora standing for its family."""


def _add_export(commands) -> None:
    """`tunelab export`: its formats, their help and their options, from the export registry."""
    from tunelab.export import EXPORT_FORMATS

    exporting = commands.add_parser("export", help=f"write a run in a deployment format ({', '.join(EXPORT_FORMATS)})")
    exporting.add_argument("run", help="a complete run directory")
    exporting.add_argument(
        "--format",
        required=True,
        choices=list(EXPORT_FORMATS),
        help="; ".join(f"{name}: {fmt.DESCRIPTION}" for name, fmt in EXPORT_FORMATS.items()),
    )
    for fmt in EXPORT_FORMATS.values():
        for option in fmt.OPTIONS:
            exporting.add_argument(
                option.flag,
                dest=option.name,
                choices=option.choices or None,
                help=f"--format {fmt.NAME}: {option.help}",
            )
    exporting.add_argument("--output", required=True, help="new folder for the exported files")
    exporting.add_argument("--task", help="for a multi_head or task_adapters run: the task to export")
    exporting.set_defaults(func=_cmd_export)


def build_parser() -> argparse.ArgumentParser:
    from tunelab import __version__

    parser = _Parser(prog="tunelab", description="Fine-tune language models and measure what it did.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="offline model registry").add_subparsers(
        dest="models_command", required=True
    )
    models.add_parser("list", help="registry models and whether each is installed/prepared").set_defaults(
        func=_cmd_models_list
    )
    prepare = models.add_parser("prepare", help="one-time GGUF -> safetensors conversion into $TUNELAB_HOME")
    prepare.add_argument("name", help="a registry model (`tunelab models list`)")
    prepare.add_argument("--force", action="store_true", help="convert again even if prepared")
    prepare.set_defaults(func=_cmd_models_prepare)

    data = commands.add_parser("data", help="data tools").add_subparsers(dest="data_command", required=True)
    check = data.add_parser(
        "check",
        help="validate a data file (errors name file:line and field) and report duplicates, conflicts, labels, "
        "token lengths and overlap with other files and suites; given a run config (.yaml), report the run's "
        "own splits as its training reads them",
    )
    _data_file_options(check)
    check.add_argument(
        "--show-masks",
        type=int,
        default=0,
        metavar="N",
        help="print the first N (training) conversations with the tokens that train marked [[ ]], the trained "
        "tokens per role, whether each assistant turn's closing token trains, and what truncation cuts",
    )
    check.set_defaults(func=_cmd_data_check)
    clean = data.add_parser(
        "clean",
        help="write a copy of a data file without duplicates and overlapping records, a report and the removed records",
    )
    _data_file_options(clean)
    clean.add_argument("--output", required=True, help="the cleaned copy, JSON Lines (never the input itself)")
    clean.add_argument(
        "--dedup",
        choices=["exact", "near", "off"],
        default="exact",
        help="remove exact duplicates (same input and answer), near-duplicates too, or none (default: %(default)s)",
    )
    clean.set_defaults(func=_cmd_data_clean)

    train = commands.add_parser("train", help="fine-tune from a YAML config")
    train.add_argument("config", nargs="?", help="the run's YAML config (see configs/); not with --resume")
    train.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. training.epochs=1")
    train.add_argument("--resume", metavar="RUN_DIR", help="finish an interrupted run from its last checkpoint")
    train.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="train with N data-parallel processes on this machine (relaunches under torchrun); "
        "training.batch_size is per process",
    )
    train.set_defaults(func=_cmd_train)

    evaluate = commands.add_parser("eval", help="score a model or run on a benchmark suite, or a run on labelled data")
    evaluate.add_argument("target", help="a run directory, registry model name, model folder or hub id")
    evaluate.add_argument(
        "--suite", help=f"a built-in suite ({_suites()}) or a suite YAML: writes <suite>.json/.md with 95%% CIs"
    )
    evaluate.add_argument(
        "--data",
        help="labelled file scored with the run's own field names (run targets only): writes data-<file>.json/.md "
        "with 95%% CIs (data-<file>-<hash of its path>.json when another file of that name was scored there)",
    )
    evaluate.add_argument(
        "--output", help="report folder (default <run>/eval, or eval/<model> for --suite on a model)"
    )
    evaluate.add_argument("--task", help=TASK_HELP)
    evaluate.add_argument(
        "--shots",
        type=int,
        default=0,
        metavar="K",
        help="K solved examples before each prompt (few-shot prompting of a generating model), drawn with --seed "
        "per example from the task's train split, never from the examples scored; 0 is zero-shot",
    )
    _scoring_option(evaluate)
    _report_options(evaluate)
    evaluate.set_defaults(func=_cmd_eval)

    judge = commands.add_parser(
        "judge",
        help="a reward run's verdict on a complete run's answers: the tuned model's win rate over the base",
        description="What eval.judge does at the end of training, for a reward model trained later: the reward run "
        "scores the base's and the tuned model's answers to the run's test prompts (read from its eval.json); the "
        "win rate goes to the run's eval.json, eval/judge.jsonl and its card.",
    )
    judge.add_argument("run", help="the complete run whose answers are judged")
    judge.add_argument(
        "--by", required=True, metavar="REWARD_RUN", help="the reward run that judges (data.kind: reward)"
    )
    judge.set_defaults(func=_cmd_judge)

    forgetting = commands.add_parser(
        "forgetting", help="what the tuned model can no longer do: base vs tuned on a suite"
    )
    forgetting.add_argument("base", help="the pretrained model (registry name, folder or hub id) or a run")
    forgetting.add_argument("tuned", help="the tuned run directory (or any model)")
    forgetting.add_argument(
        "--suite",
        default="retention",
        help=f"the tasks both models answer: a built-in suite ({_suites()}) or a suite YAML",
    )
    forgetting.add_argument("--output", help="report folder (default <tuned run>/eval)")
    _scoring_option(forgetting)
    _report_options(forgetting)
    forgetting.set_defaults(func=_cmd_forgetting)

    robustness = commands.add_parser(
        "robustness", help="metric on clean vs perturbed inputs (typos, casing, slang, ...)"
    )
    robustness.add_argument("target", help="a run directory, registry model name, model folder or hub id")
    robustness.add_argument("--task", required=True, help="a task name (tunelab tasks list) or task YAML")
    robustness.add_argument(
        "--perturbations",
        default="all",
        help="all, or a comma list: typos,char_swap,char_delete,casing,whitespace,contractions,slang",
    )
    robustness.add_argument(
        "--severity", type=float, default=0.1, help="per-word/character probability of a change (0-1)"
    )
    robustness.add_argument("--output", help="report folder")
    _report_options(robustness, limit=200)
    robustness.set_defaults(func=_cmd_robustness)

    bias = commands.add_parser("bias", help="counterfactual bias test: swap gendered words and names, compare answers")
    bias.add_argument("target", help="a run directory, registry model name, model folder or hub id")
    bias.add_argument(
        "--task", required=True, help="a task name (tunelab tasks list) or task YAML whose inputs are swapped"
    )
    bias.add_argument("--attributes", default="all", help="all, or a comma list: gender_words,names")
    bias.add_argument("--output", help="report folder")
    _report_options(bias, limit=200)
    bias.set_defaults(func=_cmd_bias)

    tasks = commands.add_parser("tasks", help="built-in tasks (instruction templates, data, metric)").add_subparsers(
        dest="tasks_command", required=True
    )
    tasks.add_parser("list", help="every built-in task with its kind and metric, and the suites").set_defaults(
        func=_cmd_tasks_list
    )
    show = tasks.add_parser("show", help="a task's settings and two formatted examples")
    show.add_argument("name", help="a built-in task (tunelab tasks list) or a task YAML")
    show.add_argument("--template", type=int, default=0, help="which instruction template to render")
    show.add_argument("--seed", type=int, default=0, help="which two examples are drawn")
    show.set_defaults(func=_cmd_tasks_show)

    human = commands.add_parser(
        "human", help="blind human ratings: export a sheet, rate, import CSV, report"
    ).add_subparsers(dest="human_command", required=True)
    export = human.add_parser("export", help="blind, shuffled sheet of base-vs-tuned (or run-vs-run) outputs")
    export.add_argument("run", help="a complete run directory whose outputs are rated")
    export.add_argument("run_b", nargs="?", help="a second run to compare with instead of the base model")
    export.add_argument("--n", type=int, default=50, help="prompts from the run's test data")
    export.add_argument("--output", required=True, help="the sheet CSV to write (its name names the sheet)")
    export.add_argument("--seed", type=int, default=0, help="prompt draw and shuffle seed")
    export.add_argument("--task", help=TASK_HELP)
    rate = human.add_parser("rate", help="rate a sheet in the terminal (fluency, coherence, relevance 1-5); resumable")
    rate.add_argument("sheet", help="the sheet CSV that `tunelab human export` wrote")
    rate.add_argument("--rater", required=True, help="your name or id, stored with each rating")
    imported = human.add_parser(
        "import", help="import ratings from a CSV: sheet,item_id,rater,fluency,coherence,relevance"
    )
    imported.add_argument("csv", help="ratings with the columns sheet,item_id,rater,fluency,coherence,relevance")
    report = human.add_parser(
        "report", help="mean and 95%% CI per system and criterion, win rate, Krippendorff's alpha"
    )
    report.add_argument("sheet", help="the sheet CSV that `tunelab human export` wrote")
    for sub in (export, rate, imported, report):
        sub.set_defaults(func=_cmd_human)

    predict = commands.add_parser(
        "predict", help="run a tuned model (or several adapters on one base) over a JSONL/CSV/Parquet file"
    )
    predict.add_argument("run", nargs="?", help="a complete run directory (--engine onnx: an ONNX export folder)")
    predict.add_argument(
        "overrides",
        nargs="*",
        help="how to read --input, as a run's data reads its files: data.text_field=COLUMN (data.text_pair_field, "
        "data.prompt_field) where the file names the run's input otherwise, data.skip_invalid=true to skip and list "
        "invalid records",
    )
    predict.add_argument(
        "--adapter",
        action="append",
        metavar="[NAME=]RUN_DIR",
        help="a PEFT adapter run; repeat to switch adapters on one base model loaded once "
        "(predictions are keyed by NAME, default the run directory's name)",
    )
    predict.add_argument(
        "--input",
        required=True,
        help="records to answer (JSONL, CSV or Parquet) with the input fields the run trained on: a classifier's "
        "data.text_field (and data.text_pair_field), a generator's prompt_template fields; no label or answer needed "
        "(another column: data.text_field=COLUMN); or a .txt file, one text per line. A reward model scores "
        "prompt with chosen and rejected, or prompt with completion",
    )
    predict.add_argument(
        "--output",
        required=True,
        help="JSONL: each input record plus `prediction` (and a classifier's `scores`); a reward model's "
        "`score_chosen` and `score_rejected` for a pair, `score` for a prompt with one completion",
    )
    predict.add_argument("--task", help=TASK_HELP)
    predict.add_argument(
        "--engine",
        choices=["torch", "onnx"],
        default="torch",
        help="torch: the run's model; onnx: onnxruntime on CPU over an ONNX export folder "
        "(`tunelab export RUN --format onnx --output DIR`, then `tunelab predict DIR --engine onnx`), "
        "the same output rows without loading the run",
    )
    predict.set_defaults(func=_cmd_predict)

    merge = commands.add_parser(
        "merge",
        help="write a standalone model with the run's update folded in "
        f"({', '.join(method_names(lambda traits: traits.mergeable))})",
    )
    merge.add_argument("run", help="a complete run directory")
    merge.add_argument("--output", required=True, help="new folder for the merged model (safetensors + tokenizer)")
    merge.add_argument(
        "--task",
        help="for a multi_head or task_adapters run: the task whose head or adapter to export as a standalone model",
    )
    merge.set_defaults(func=_cmd_merge)

    _add_export(commands)

    trained = len(COMPARE_METHODS.split(","))
    compare_help = (
        f"train one config with several methods (without --methods: all {trained}, so {trained} models); "
        "table, JSON and plot of cost vs gain"
    )
    compare = commands.add_parser("compare", help=compare_help, description=compare_help)
    compare.add_argument("config", help="the YAML config every variant starts from")
    compare.add_argument("overrides", nargs="*", help="key.sub=value overrides applied to every method's run")
    compare.add_argument(
        "--methods",
        default=COMPARE_METHODS,
        help=f"comma-separated method names; one model is trained per method, {trained} without this option "
        "(default: %(default)s)",
    )
    compare.add_argument(
        "--learning-rates",
        default="",
        metavar="M=LR,...",
        help="per-method learning rates, e.g. full=3e-5,lora=1e-3; others use the method's default",
    )
    compare.add_argument(
        "--mixtures",
        metavar="T[+T...],...",
        help="compare task mixtures instead of methods, e.g. 'sst2,rte,sst2+rte' (specialists vs multi-task)",
    )
    compare.add_argument(
        "--sizes",
        metavar="N,N,...",
        help="a learning curve instead of methods: the config trained on the first N training examples for each N, "
        "e.g. '0,100,250,500,1000' (0 is the base model)",
    )
    compare.add_argument("--output-dir", default="compare", help="the comparison goes to OUTPUT_DIR/<config name>")
    compare.set_defaults(func=_cmd_compare)

    sweep = commands.add_parser(
        "sweep", help="search a config's sweep: space with Optuna (TPE, median pruning); run again to continue"
    )
    sweep.add_argument("config", help="a YAML config with a sweep: section (see configs/sweep-*.yaml)")
    sweep.add_argument("overrides", nargs="*", help="key.sub=value overrides applied to every trial, as in train")
    sweep.add_argument(
        "--trials",
        type=int,
        metavar="N",
        help="finished trials the study should hold in all, counting earlier runs (default: sweep.trials, or no "
        "limit with --minutes)",
    )
    sweep.add_argument(
        "--minutes", type=float, metavar="M", help="start no trial after M minutes (one under way runs to its end)"
    )
    sweep.add_argument(
        "--output",
        metavar="DIR",
        help="the sweep's folder (default sweeps/<config name>); sweeping into it again continues its study",
    )
    sweep.set_defaults(func=_cmd_sweep)

    serve = commands.add_parser("serve", help="serve runs and models over an OpenAI-compatible HTTP API")
    serve.add_argument(
        "targets",
        nargs="+",
        metavar="[NAME=]TARGET",
        help="run directories, registry names or model folders; runs whose adapters share a base load it once",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind; 127.0.0.1 is this machine only")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $TUNELAB_API_KEY, else none)")
    serve.add_argument("--max-batch", type=int, default=8, help="requests generated together (1 turns batching off)")
    serve.add_argument(
        "--batch-window-ms", type=float, default=10.0, help="how long a request waits for others to join"
    )
    serve.add_argument("--queue-size", type=int, default=64, help="waiting requests before 429 Too Many Requests")
    serve.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (413 above)")
    serve.add_argument("--max-prompt-tokens", type=int, default=2048, help="longest prompt (400 above)")
    serve.add_argument("--max-tokens-cap", type=int, default=512, help="largest max_tokens a request may ask")
    serve.add_argument("--default-max-tokens", type=int, default=128, help="max_tokens when a request gives none")
    serve.add_argument("--timeout", type=float, default=120.0, help="seconds a request may take (504 after)")
    serve.add_argument(
        "--batching",
        choices=["continuous", "static"],
        default="continuous",
        help="continuous: requests join and leave the decoding batch at every step; static: a batch runs to its end",
    )
    serve.add_argument(
        "--no-fold-adapters",
        dest="fold_adapters",
        action="store_false",
        help="never fold a LoRA adapter into its base's weights: saves the copy of the adapted weights folding keeps "
        "(about the size of those weights), at the unmerged adapter's speed",
    )
    serve.add_argument(
        "--prefix-cache-tokens",
        type=int,
        default=4096,
        help="prompt-beginning tokens whose states each base keeps for later prompts that open the same way (0: off)",
    )
    serve.add_argument("--threads", type=int, default=default_threads(), help=THREADS_HELP)
    serve.add_argument(
        "--allow-adapter-loading",
        action="store_true",
        help="route POST /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's) to load and unload adapter runs "
        "while the server runs (needs --adapter-root)",
    )
    serve.add_argument(
        "--adapter-root",
        metavar="DIR",
        help="the folder every loaded run must lie in (symlinks followed; a relative lora_path is read from it)",
    )
    serve.add_argument(
        "--max-adapters",
        type=int,
        help="adapters loaded at once, at start and at run time (default 8); one more unloads the least recently "
        "used one with no request in flight",
    )
    serve.set_defaults(func=_cmd_serve)

    ui = commands.add_parser(
        "ui", help="local web app: runs, live curves, comparisons, a side-by-side playground, human rating"
    )
    ui.add_argument(
        "--runs",
        action="append",
        help="a folder of run directories or comparisons (repeatable; default: runs, compare and sweeps here)",
    )
    ui.add_argument("--host", default="127.0.0.1", help="address to bind; 127.0.0.1 is this machine only")
    ui.add_argument("--port", type=int, default=7860, help="port to listen on")
    ui.add_argument(
        "--token", help="require this token (default: $TUNELAB_UI_TOKEN; needed to bind anything but loopback)"
    )
    ui.add_argument("--threads", type=int, default=default_threads(), help=THREADS_HELP)
    ui.set_defaults(func=_cmd_ui)

    demo = commands.add_parser("demo", help="LoRA-tune minilm-l6 on the bundled sentiment data; print base vs tuned")
    demo.add_argument("--output-dir", default="runs", help="the demo's run directory is created in this folder")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may follow options (`data check F --task T data.labels=[a,b]`), which argparse
    # cannot express with two positionals, so they are collected here.
    if extra and (
        not hasattr(args, "overrides") or not all("=" in item and not item.startswith("-") for item in extra)
    ):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return args.func(args) or 0  # a command returns a status only when it ran another process (train --nproc)
    except TunelabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
