"""The command line: argument parsing only. Every user mistake becomes one line on stderr and
exit status 2; anything else is a bug and keeps its traceback."""

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from loguru import logger

from .. import __version__
from ..engine import StyleParams
from ..util.errors import NstBatchError

EXIT_USAGE = 2

# Flags whose spelling differs from the parameter they set (the and neural-style's names).
_PARAM_FLAG_ALIASES = {"style_blend_weights": ("--style-blend",)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    from .logs import setup_logging

    setup_logging(level="DEBUG" if getattr(args, "verbose", False) else "INFO")
    try:
        status = args.handler(args) or 0
        sys.stdout.flush()  # here, where a closed pipe is caught, not at the interpreter's exit
        return status
    except NstBatchError as error:
        print(f"nst-batch: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("nst-batch: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if args.command == "serve":  # the daemon prints nothing: a broken pipe there is a fault
            raise
        _quiet_stdout()
        return 0


def _quiet_stdout() -> None:
    """The reader of our output has gone (``nst-batch status | head -3``): that is how a pipe
    ends, not an error. What is still buffered goes nowhere, so the interpreter's last flush
    cannot fail again with a traceback (the recipe of Python's signal documentation)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nst-batch", description="Neural style transfer, one image or a whole night of them.")
    parser.add_argument("--version", action="version", version=f"nst-batch {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="stylize one content image now, in the foreground")
    run.add_argument("--content", required=True, type=Path, help="the content image")
    run.add_argument("--style", required=True, type=Path, action="append", help="a style image (repeat to blend several)")
    run.add_argument("--output", "-o", required=True, type=Path, help="the result (.png, .jpg or .webp)")
    run.add_argument("--gif", type=Path, help="also write the optimization as an animated GIF")
    run.add_argument("--no-log", action="store_true", help="do not write OUTPUT.losses.csv")
    run.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: the config's, else auto)")
    run.add_argument("--weights", help="imagenet | PATH.pth | random (tests only)")
    run.add_argument("--weights-format", choices=("auto", "torchvision", "caffe"))
    run.add_argument(
        "--memory-budget", metavar="BYTES", type=_byte_size,
        help="for --tile auto: the memory the run may use, e.g. 6GiB (default: the config's scheduler.memory_budget, "
        "else the device's free memory less scheduler.reserve)",
    )
    _add_config_options(run)
    _add_param_options(run)
    run.set_defaults(handler=_run)

    serve = commands.add_parser("serve", help="run the daemon in the foreground: watch the inbox, fill the outbox")
    _add_config_options(serve)
    serve.set_defaults(handler=_serve)

    status = commands.add_parser("status", help="queued, running, done and failed jobs, from the job database")
    _add_config_options(status)
    status.add_argument("--json", action="store_true", help="machine-readable output (with --watch: one JSON object per line)")
    status.add_argument(
        "--watch", nargs="?", const=2.0, type=_positive_seconds, metavar="SECONDS",
        help="refresh every SECONDS (default 2) until Ctrl-C",
    )
    status.add_argument("--all", action="store_true", help="list every waiting job, not only the first 20")
    status.set_defaults(handler=_status)

    pause = commands.add_parser("pause", help="start no new run; running runs finish (or checkpoint with --now)")
    pause.add_argument("--now", action="store_true", help="running runs checkpoint and wait too")
    _add_config_options(pause)
    pause.set_defaults(handler=_pause)

    resume = commands.add_parser("resume", help="start queued runs again after a pause")
    _add_config_options(resume)
    resume.set_defaults(handler=_resume)

    cancel = commands.add_parser("cancel", help="cancel jobs or runs: they stop, their inputs go to cancelled/")
    cancel.add_argument("targets", nargs="+", metavar="JOB|RUN", help="job-5, 5, a job's name, or run-12 (as status shows them)")
    _add_config_options(cancel)
    cancel.set_defaults(handler=_cancel)

    retry = commands.add_parser("retry", help="queue failed or cancelled jobs again, with fresh attempts")
    retry.add_argument("targets", nargs="+", metavar="JOB", help="job-5, 5 or a job's name (as status shows them)")
    retry.add_argument(
        "--param", dest="params", action="append", default=[], metavar="KEY=VALUE",
        help="change an engine parameter of the retried jobs, e.g. --param style_weight=1e5 (over their sidecar)",
    )
    _add_config_options(retry)
    retry.set_defaults(handler=_retry)

    priority = commands.add_parser("priority", help="set a waiting job's priority (higher starts sooner)")
    priority.add_argument("target", metavar="JOB", help="job-5, 5 or a job's name")
    priority.add_argument("value", metavar="N", type=_priority, help="the new priority, -1000..1000")
    _add_config_options(priority)
    priority.set_defaults(handler=_priority_command)

    estimate = commands.add_parser("estimate", help="predicted peak memory and time of a job, or of the queue")
    estimate.add_argument("--content", type=Path, help="the content image")
    estimate.add_argument("--style", type=Path, action="append", default=[], help="a style image (repeat for several)")
    estimate.add_argument("--queue", action="store_true", help="estimate everything queued instead")
    estimate.add_argument("--json", action="store_true", help="machine-readable output (peak_bytes, seconds)")
    _add_config_options(estimate)
    _add_param_options(estimate)
    estimate.set_defaults(handler=_estimate)

    validate = commands.add_parser("validate", help="check a config file or a sidecar; exit 0 if valid, 2 if not")
    validate.add_argument("file", type=Path)
    validate.set_defaults(handler=_validate)

    fetch = commands.add_parser("fetch-weights", help="download ImageNet weights into torchvision's cache (TORCH_HOME)")
    # no argparse `choices`: Python 3.11 checks an empty nargs="*" list against them and fails
    fetch.add_argument("backbones", nargs="*", metavar="BACKBONE", help="vgg19 (default), vgg16, resnet18")
    fetch.add_argument("--url", help="download from this mirror instead (the file is checked by loading it)")
    fetch.add_argument(
        "--if-missing", action="store_true", help="fetch only what the cache lacks (what `make run` does first)"
    )
    _add_config_options(fetch)
    fetch.set_defaults(handler=_fetch)
    return parser


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="a config file (see config.example.yaml)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set defaults.iterations=100 or --set iterations=100",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug lines")


def _add_param_options(parser: argparse.ArgumentParser) -> None:
    """One flag per StyleParams field, in both spellings (--image-size and --image_size)."""
    group = parser.add_argument_group("style parameters (default: the config's `defaults`, else built-in)")
    for name, field in StyleParams.model_fields.items():
        flags = (f"--{name.replace('_', '-')}", f"--{name}", *_PARAM_FLAG_ALIASES.get(name, ()))
        flags = tuple(dict.fromkeys(flags))
        if field.annotation is bool:
            group.add_argument(*flags, dest=f"param_{name}", action="store_const", const=True, help=field.description)
        else:
            group.add_argument(*flags, dest=f"param_{name}", metavar=name.upper(), help=field.description)


def _given_params(args: argparse.Namespace) -> dict[str, str | bool]:
    return {key.removeprefix("param_"): value for key, value in vars(args).items() if key.startswith("param_") and value is not None}


def _run(args: argparse.Namespace) -> int:
    from pydantic import ByteSize

    from ..settings.config import ModelConfig, load_config, params_with_overrides
    from ..util.errors import InputError
    from .oneshot import OneShot, run_once

    config = load_config(args.config, args.overrides)
    given = _given_params(args)
    auto_tile = given.get("tile") == "auto"
    if auto_tile:
        del given["tile"]
    elif args.memory_budget is not None:
        raise InputError("--memory-budget is the budget of --tile auto: add --tile auto, or leave it out")
    scheduler = config.scheduler
    if args.memory_budget is not None:
        scheduler = scheduler.model_copy(update={"memory_budget": ByteSize(args.memory_budget)})
    job = OneShot(
        content=args.content,
        styles=tuple(args.style),
        output=args.output,
        params=params_with_overrides(config.defaults, given, source="command line"),
        device=args.device or config.device,
        model=ModelConfig(
            weights=args.weights or config.model.weights,
            weights_format=args.weights_format or config.model.weights_format,
        ),
        gif=args.gif,
        loss_log=not args.no_log,
        max_pixels=config.max_pixels,
        performance=config.performance,
        auto_tile=auto_tile,
        scheduler=scheduler,
    )
    run_once(job)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from ..daemon.service import serve
    from ..settings.config import load_config
    from .logs import setup_logging

    config = load_config(args.config, args.overrides)
    log = config.log
    setup_logging("DEBUG" if args.verbose else log.level, log.json_file, log.rotation, log.retention)
    return serve(config)


def _status(args: argparse.Namespace) -> int:
    from ..settings.config import load_config
    from . import status

    config = load_config(args.config, args.overrides)
    limit = None if args.all else status.QUEUED_SHOWN
    if args.watch is not None:
        return status.watch(lambda: status.gather(config, limit), args.watch, sys.stdout, as_json_text=args.json)
    print(status.show(status.gather(config, limit), args.json, sys.stdout))
    return 0


def _pause(args: argparse.Namespace) -> int:
    from ..settings.config import load_config
    from . import control

    print(control.pause(load_config(args.config, args.overrides), args.now))
    return 0


def _resume(args: argparse.Namespace) -> int:
    from ..settings.config import load_config
    from . import control

    print(control.resume(load_config(args.config, args.overrides)))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from ..settings.config import load_config
    from . import control

    return _answered(control.cancel(load_config(args.config, args.overrides), args.targets))


def _retry(args: argparse.Namespace) -> int:
    from ..settings.config import load_config
    from . import control

    config = load_config(args.config, args.overrides)
    overrides = control.param_overrides(args.params, config.defaults)
    return _answered(control.retry(config, args.targets, overrides))


def _answered(answers) -> int:
    """The daemon's answers, one line each; one that changed nothing on stderr, and exit status 2."""
    for answer in answers:
        if answer.refused:
            print(f"nst-batch: error: {answer.text}", file=sys.stderr)
        else:
            print(answer.text)
    return EXIT_USAGE if any(answer.refused for answer in answers) else 0


def _priority_command(args: argparse.Namespace) -> int:
    from ..settings.config import load_config
    from . import control

    print(control.priority(load_config(args.config, args.overrides), args.target, args.value))
    return 0


def _priority(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not -1000 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"{text}: give a priority from -1000 to 1000, as in a sidecar")
    return value


def _byte_size(text: str) -> int:
    from pydantic import ByteSize, TypeAdapter, ValidationError

    try:
        size = TypeAdapter(ByteSize).validate_python(text)
    except ValidationError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: write e.g. 6GiB or 512MiB") from None
    if size <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a size above 0")
    return int(size)


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds above 0")
    return seconds


def _estimate(args: argparse.Namespace) -> int:
    from ..daemon import estimate
    from ..settings.config import load_config, params_with_overrides

    config = load_config(args.config, args.overrides)
    if args.queue:
        figures, what = estimate.queue(config), "queue"
    else:
        if args.content is None or not args.style:
            raise NstBatchError("estimate needs --content and --style (or --queue)")
        params = params_with_overrides(config.defaults, _given_params(args), source="command line")
        figures, what = estimate.one_job(config, params, args.content, args.style), "job"
    print(estimate.as_json(figures) if args.json else estimate.render(figures, what))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from ..settings.check import validate_file

    print(validate_file(args.file))
    return 0


def _fetch(args: argparse.Namespace) -> int:
    """The named backbones, or with --config the one its daemon loads first, if it uses ImageNet weights."""
    from ..engine import imagenet_file
    from ..engine.layers import BACKBONES
    from .fetch import fetch_weights

    backbones = args.backbones
    if not backbones and args.config is not None:
        from ..settings.config import load_config

        config = load_config(args.config, args.overrides)
        if str(config.model.weights) != "imagenet":
            logger.info(f"{args.config} uses the weights {config.model.weights}: nothing to fetch")
            return 0
        backbones = [config.defaults.backbone]
    for backbone in dict.fromkeys(backbones or ["vgg19"]):
        if backbone not in BACKBONES:
            raise NstBatchError(f"unknown backbone {backbone!r}: choose from {', '.join(BACKBONES)}")
        if args.if_missing and imagenet_file(backbone).is_file():
            logger.info(f"the {backbone} ImageNet weights are in {imagenet_file(backbone)}")
            continue
        logger.info(f"fetching {backbone} ImageNet weights ...")
        logger.info(f"saved {fetch_weights(backbone, url=args.url)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
