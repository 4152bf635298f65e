"""The `rewarm` command line.

User errors (bad spec, missing data, unusable storage, corrupt checkpoint, a run that
diverged) print one line `rewarm: error: ...` and exit non-zero without a traceback:
2 for bad input, 3 for a run that diverged or failed. Set REWARM_DEBUG=1 for tracebacks.
"""

from __future__ import annotations

import argparse
import os
import sys

EXIT_USAGE = 2
EXIT_RUN_FAILED = 3


def _add_spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="sweep spec YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a knob (max_lr=3e-4, warmup_frac=0.01, replay_ratio=0.05, schedule=cosine) "
                        "or any spec field by dotted path (training.micro_batch_size=4); repeatable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rewarm", description="Continual pre-training sweeps: re-warming, replay, forgetting.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a spec without running it")
    _add_spec_args(p)

    p = sub.add_parser("train", help="run one trial of a spec with every knob fixed")
    _add_spec_args(p)
    p.add_argument("--run-name", help="run name under the storage path; an existing run of that name is resumed")
    p.add_argument("--stop-after-steps", type=int, metavar="K", help="checkpoint and stop after K steps (resume later with the same --run-name)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local cluster)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("rewarm: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - turned into a one-line message below
        code, message = _classify(exc)
        if os.environ.get("REWARM_DEBUG") or code is None:
            raise
        print(f"rewarm: error: {message}", file=sys.stderr)
        return code


def _classify(exc: Exception) -> tuple[int | None, str]:
    from sweeps.resolve import ResolveError
    from sweeps.spec import SpecError
    from sweeps.train_run import RunFailed
    from trainers.checkpoint import CheckpointError
    from trainers.data import DataError

    if isinstance(exc, (SpecError, ResolveError, DataError, CheckpointError)):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, RunFailed):
        return EXIT_RUN_FAILED, str(exc)
    return None, str(exc)


def _dispatch(args) -> int:
    from sweeps.spec import load_spec

    spec = load_spec(args.spec, args.overrides)
    if args.command == "validate":
        knobs = spec.knob_params()
        print(f"{args.spec}: ok - sweep {spec.name!r}, {spec.budget.num_trials} trials x "
              f"{spec.steps_per_trial} steps ({spec.budget.tokens_per_trial} tokens); knobs: "
              + ", ".join(f"{k}={p.describe()}" for k, p in knobs.items()))
        return 0
    if args.command == "train":
        return _train(spec, args)
    raise AssertionError(args.command)


def _train(spec, args) -> int:
    from sweeps.train_run import RunFailed, run_single

    outcome = run_single(spec, run_name=args.run_name, stop_after_step=args.stop_after_steps, address=args.address)
    m = outcome.metrics
    if outcome.status == "diverged":
        raise RunFailed(f"run diverged at step {m.get('step')} (loss {m.get('loss')}); "
                        f"lower max_lr or lengthen warmup_frac. Curve: {outcome.run_dir / 'curves.jsonl'}")
    line = f"[rewarm] {outcome.status} at step {m.get('step')} ({m.get('tokens')} tokens)"
    if "objective" in m:
        line += (f": L_up={m['L_up']:.4f} L_down={m['L_down']:.4f} gain={m['gain']:+.4f} "
                 f"forgetting={m['forgetting']:+.4f} objective={m['objective']:+.4f}")
    print(line)
    print(f"[rewarm] curves and summary in {outcome.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
