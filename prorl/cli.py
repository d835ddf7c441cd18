"""Command line: a thin layer over `prorl.Config` and `prorl.Trainer`.

    prorl train [--config FILE.yaml] [--OPTION VALUE ...]
    prorl eval --model CKPT [--k 1,4] ...   |   prorl plot OUTPUT_DIR   |   prorl merge CKPT --out DIR
    python -m prorl train ...            (also under `accelerate launch -m prorl train ...`)
"""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
import typing

from .config import Config, ConfigError, _field_types, _unwrap_optional, load_config, option_table

EXIT_USAGE = 2
EXIT_ABORTED = 3
EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what, and how to fix) with exit code 2."""

    def error(self, message: str):
        if "unrecognized arguments" in message:
            unknown = message.split(":", 1)[1].split()
            flag = next((u for u in unknown if u.startswith("--")), unknown[0])
            command = getattr(self, "command", None) or self.prog.split()[-1]
            name = flag.lstrip("-").split("=")[0]
            offered = EVAL_OPTIONS if command == "eval" else [f.name for f in _options()]
            if command == "eval" and name in {f.name for f in _options()}:
                message = f"--{name} is a training option; `prorl eval` does not read it (`prorl eval --help` lists what it does)"
            else:
                near = difflib.get_close_matches(name, list(offered), n=1)
                hint = f" (did you mean --{near[0]}?)" if near else ""
                message = f"unknown option {flag}{hint}; `prorl {command} --help` lists them"
        sys.stderr.write(f"prorl: error: {message}\n")
        sys.exit(EXIT_USAGE)


def _options():
    import dataclasses

    return dataclasses.fields(Config)


# What `prorl eval` reads of the training options: data, rewards, sampling, precision. The rest
# (batch shape, loss, optimizer, reference, checkpoints) means nothing there and is not offered.
EVAL_OPTIONS = (
    "tokenizer_name_or_path", "dataset", "datasets", "dataset_config", "dataset_split", "data_files", "prompt_column",
    "rename_columns", "prompt_template", "max_prompts", "streaming", "shuffle_buffer", "chat_template", "system_prompt",
    "max_prompt_length", "reward_funcs", "reward_weights", "reward_kwargs", "reward_fallback", "reward_strict",
    "reward_timeout", "code_sandbox", "max_length", "temperature", "top_p", "top_k", "rollout_engine", "cuda_graphs",
    "vllm_gpu_memory_utilization", "vllm_kwargs", "eval_threshold", "dtype", "mixed_precision", "seed", "deterministic",
)
EVAL_DEFAULTS = {"dataset_split": "test"}


def _add_config_options(parser: argparse.ArgumentParser, only: tuple | None = None, defaults: dict | None = None) -> None:
    types_ = _field_types()
    group = parser.add_argument_group("options (YAML keys; the command line wins over --config)")
    for name, tname, default, help_ in option_table():
        if only is not None and name not in only:
            continue
        if defaults and name in defaults:
            default = repr(defaults[name])
        base, _ = _unwrap_optional(types_[name])
        kw: dict = {"default": argparse.SUPPRESS, "help": f"{help_} [{tname}, default {default}]", "metavar": "VALUE"}
        if base is bool:
            kw.update(nargs="?", const="true")
        elif typing.get_origin(base) is list:
            kw.update(nargs="+")
        group.add_argument(f"--{name}", **kw)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="prorl", description="ProRL / GRPO reinforcement learning from verifiable rewards.")
    parser.command = command  # names the subcommand in one-line errors raised by the root parser
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    train = sub.add_parser("train", help="train a policy", description="Train a causal LM with the ProRL recipe.")
    train.add_argument("--config", metavar="FILE.yaml", help="YAML file of options (see launch/recipes/)")
    _add_config_options(train)

    ev = sub.add_parser("eval", help="pass@k of a model", description="Sample n completions per prompt and report "
                        "pass@k (unbiased estimator), mean reward and lengths, as a table and as JSON. Dataset, reward and "
                        "sampling options are the training options; dataset_split defaults to 'test'.")
    ev.add_argument("--model", required=True, help="checkpoint folder or Hub model id")
    ev.add_argument("--k", default="1", help="comma-separated k values, e.g. 1,4,16 [default 1]")
    ev.add_argument("--n", type=int, default=None, help="samples per prompt [default: the largest k]")
    ev.add_argument("--json", metavar="FILE", help="also write the result to this JSON file")
    ev.add_argument("--config", metavar="FILE.yaml", help="YAML file of options (training-only keys in it are ignored)")
    _add_config_options(ev, only=EVAL_OPTIONS, defaults=EVAL_DEFAULTS)

    pl = sub.add_parser("plot", help="PNG charts of a run", description="Write PNG charts of OUTPUT_DIR/metrics.jsonl.")
    pl.add_argument("output_dir", help="a training run's output_dir")
    pl.add_argument("--out", help="folder for the PNGs [default OUTPUT_DIR/plots]")

    mg = sub.add_parser("merge", help="LoRA checkpoint -> plain model", description="Fold a LoRA checkpoint's adapters "
                        "(and the base layers its reference resets changed) into the base model; write a plain model folder.")
    mg.add_argument("checkpoint", help="a LoRA run's checkpoint folder")
    mg.add_argument("--out", required=True, help="folder for the merged model")
    mg.add_argument("--base", help="base model folder or Hub id [default: the one the run was trained from]")
    return parser


def parse_train_args(argv: list[str]) -> Config:
    args = vars(build_parser("train").parse_args(["train", *argv]))
    config_file = args.pop("config", None)
    args.pop("command", None)
    return load_config(config_file, args)


def _eval(argv: list[str]) -> None:
    import json

    from accelerate import PartialState

    from .evaluate import format_table, run_eval

    args = vars(build_parser("eval").parse_args(["eval", *argv]))
    try:
        ks = [int(k) for k in str(args.pop("k")).split(",") if k.strip()]
    except ValueError:
        raise ConfigError("--k must be comma-separated integers, e.g. 1,4,16") from None
    n = args.pop("n") or max(ks)
    json_path = args.pop("json")
    config_file = args.pop("config")
    args.pop("command")
    args["model_name_or_path"] = args.pop("model")
    for name, value in EVAL_DEFAULTS.items():  # the defaults --help shows
        args.setdefault(name, value)
    args.setdefault("progress_bar", False)
    args.setdefault("max_steps", 1)  # training's length does not apply to eval (streaming=true asks for one)
    cfg = load_config(config_file, args)
    if any(k > n for k in ks) or any(k < 1 for k in ks):
        raise ConfigError(f"--k {ks}: each k must be between 1 and n={n}")
    result = run_eval(cfg, ks=ks, n=n)
    state = PartialState()  # every process holds the gathered result; the main one reports it
    if state.is_main_process:
        print(format_table(result))
        print(json.dumps(result))
        if json_path:
            with open(json_path, "w") as fh:
                json.dump(result, fh, indent=2)


def _plot(argv: list[str]) -> int:
    from .plot import plot_run

    args = build_parser("plot").parse_args(["plot", *argv])
    for path in plot_run(args.output_dir, args.out):
        print(path)
    return 0


def _merge(argv: list[str]) -> int:
    from .lora import merge_checkpoint

    args = build_parser("merge").parse_args(["merge", *argv])
    print(merge_checkpoint(args.checkpoint, args.out, base=args.base))
    return 0


def _leave_if_launched() -> None:
    """A finished train or eval under several processes (its process group already destroyed by
    `dist.finish`) leaves without interpreter teardown, where backend objects' exit-time aborts and
    hangs start."""
    from accelerate import PartialState

    from .dist import exit_now

    if PartialState().num_processes > 1:
        exit_now(0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else EXIT_USAGE
    command = argv[0]
    if command not in ("train", "eval", "plot", "merge"):
        parser.parse_args(argv)  # prints the one-line error
    # prorl's own INFO lines; other libraries only from WARNING (datasets, for one, logs "JAX version ...
    # available" at INFO on import, which would turn a one-line error into two)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("prorl").setLevel(logging.INFO)
    from .checkpoint import CheckpointError
    from .rewards import RewardConfigError
    from .trainer import Trainer, TrainingAborted

    try:
        if command == "plot":
            return _plot(argv[1:])
        if command == "merge":
            return _merge(argv[1:])
        if command == "eval":
            _eval(argv[1:])
        else:
            Trainer(parse_train_args(argv[1:])).train()
        _leave_if_launched()
    except (ConfigError, RewardConfigError, CheckpointError) as e:
        sys.stderr.write(f"prorl: error: {e}\n")
        return EXIT_USAGE
    except TrainingAborted as e:
        sys.stderr.write(f"prorl: aborted: {e}\n")
        return EXIT_ABORTED
    except KeyboardInterrupt:  # Ctrl-C before training started, or a second one during it
        sys.stderr.write("\nprorl: interrupted; nothing after the last checkpoint was saved (continue with --resume latest)\n")
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
