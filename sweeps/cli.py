"""The `rewarm` command line.

User errors (every `trainers.errors.UserError`: bad spec, missing data, unusable storage,
corrupt checkpoint, unreachable tracking server...) print one line `rewarm: error: ...` and
exit 2 without a traceback; a run that diverged or failed exits 3. `_classify` is the one
place that maps errors to exit codes. Set REWARM_DEBUG=1 for tracebacks.
"""

from __future__ import annotations

import argparse
import os
import sys

from sweeps.config.layout import DEFAULT_STORAGE_PATH
from sweeps.settings import VERBOSE_ENV, apply_process_settings
from trainers.errors import UserError
from trainers.run_dir import CURVES_FILE

EXIT_USAGE = 2
EXIT_RUN_FAILED = 3


def _add_spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="sweep spec YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a knob (max_lr=3e-4, warmup_frac=0.01, replay_ratio=0.05, schedule=cosine) "
                        "or any spec field by dotted path (training.micro_batch_size=4); repeatable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rewarm", description="Continual pre-training sweeps: re-warming, replay, forgetting.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="let Ray's, MLflow's and Optuna's own notices (INFO lines, warnings) reach the terminal")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a spec without running it")
    _add_spec_args(p)

    p = sub.add_parser("train", help="run one trial of a spec with every knob fixed")
    _add_spec_args(p)
    p.add_argument("--run-name", help="run name under the storage path; an existing run of that name is resumed")
    p.add_argument("--stop-after-steps", type=int, metavar="K", help="checkpoint and stop after K steps (resume later with the same --run-name)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local cluster)")

    p = sub.add_parser("sweep", help="run a sweep: Ray Tune + Optuna over the spec's search space")
    _add_spec_args(p)
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local cluster)")

    p = sub.add_parser("resume", help="continue an interrupted sweep (searcher history, trials and MLflow runs kept)")
    p.add_argument("sweep", help="sweep name (under --storage-path) or its directory")
    p.add_argument("--storage-path", default=DEFAULT_STORAGE_PATH, help=f"where the sweep was stored (default: {DEFAULT_STORAGE_PATH})")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local cluster)")

    p = sub.add_parser("best", help="rank a sweep's configs from MLflow (no Ray needed)")
    p.add_argument("--sweep", required=True, help="sweep name")
    p.add_argument("--top", type=int, default=5, help="how many configs to show (default 5)")
    p.add_argument("--max-forgetting", type=float, metavar="E", help="only configs whose forgetting is <= E nats/token")
    p.add_argument("--pareto", action="store_true", help="only the gain/forgetting Pareto front")
    p.add_argument("--format", choices=("table", "json", "yaml"), default="table")
    p.add_argument("--export", metavar="FILE", help="write a spec with the best config fixed (for `rewarm train FILE`)")
    p.add_argument("--register", metavar="NAME", help="register the best trial's model in the MLflow Model Registry "
                                                      "as NAME with alias 'best' (load it from models:/NAME@best)")
    p.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db")
    p.add_argument("--experiment", help="MLflow experiment (default: search all)")

    p = sub.add_parser("analyze", help="downstream task metrics vs pre-training loss over a sweep (thresholds, correlations)")
    p.add_argument("--sweep", required=True, help="sweep name")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db")
    p.add_argument("--experiment", help="MLflow experiment (default: search all)")

    p = sub.add_parser("forecast", help="each trial's predicted final gain, forgetting and objective with intervals, and "
                                        "the best untried configs (the schedule law over the sweep's curves)")
    p.add_argument("--sweep", required=True, help="sweep name (running or finished)")
    p.add_argument("--coverage", type=float, default=0.9, help="coverage of the intervals (default 0.9)")
    p.add_argument("--top", type=int, default=5, help="how many untried configs to show (default 5)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db")
    p.add_argument("--experiment", help="MLflow experiment (default: search all)")

    p = sub.add_parser("importance", help="which knob matters for gain, forgetting and the objective (Optuna fANOVA "
                                          "over the sweep's study; logged to its parent run)")
    p.add_argument("--sweep", required=True, help="sweep name")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db")
    p.add_argument("--experiment", help="MLflow experiment (default: search all)")

    p = sub.add_parser("report", help="write an HTML report with plots of a sweep (also logged to its MLflow run)")
    p.add_argument("--sweep", required=True, help="sweep name")
    p.add_argument("--out", required=True, help="directory for report.html and its PNGs")
    p.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db")
    p.add_argument("--experiment", help="MLflow experiment (default: search all)")

    p = sub.add_parser("reproduce", help="run a paper's experiments as sweeps on the embedded world and report "
                                         "which of its findings hold (sweeps/reproduce/)")
    p.add_argument("paper", help="gupta2023, ibrahim2024, du2024 or all")
    p.add_argument("--out", default="reports/reproduce", help="directory for report.html, findings.json and the PNGs")
    p.add_argument("--name", default="reproduce", help="prefix of the sweeps' names (<name>-<experiment>); the same "
                                                      "name again reuses finished sweeps and resumes unfinished ones")
    p.add_argument("--tokens-per-trial", type=int, metavar="N", help="every trial's budget (default: the base spec's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the base spec (sweeps/specs/reproduce.yaml) by dotted path; repeatable")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local cluster)")

    p = sub.add_parser("ui", help="print (or run) the MLflow UI command for the sweep's store")
    p.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--sweep", help="open on this sweep's runs (default: the newest sweep's experiment)")
    p.add_argument("--run", action="store_true", help="start the UI instead of printing the command")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"
        os.environ["MLFLOW_LOGGING_LEVEL"] = "INFO"
    apply_process_settings()
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
    """The exit code and one-line message of an error, or (None, ...) for a bug (traceback)."""
    from sweeps.execution.failures import RunFailed

    if isinstance(exc, UserError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, RunFailed):
        return EXIT_RUN_FAILED, str(exc)
    mlflow_error = _mlflow_error(exc)
    if mlflow_error:
        return EXIT_USAGE, mlflow_error
    if type(exc).__name__ in ("ConnectionError", "AuthenticationError") and "ray" in type(exc).__module__ + str(exc).lower():
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return EXIT_USAGE, (f"cannot join the Ray cluster ({first[:300]}); check --address / RAY_ADDRESS, and for a "
                            f"cluster with token auth set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN")
    return None, str(exc)


def _mlflow_error(exc: Exception) -> str | None:
    """A tracking-server refusal (bad credentials, permissions) as one line that says the fix."""
    from mlflow.exceptions import MlflowException

    if not isinstance(exc, MlflowException):
        return None
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    status = getattr(exc, "get_http_status_code", lambda: None)()
    if status in (401, 403) or "401" in text or "403" in text or "nauthorized" in text:
        return (f"the MLflow tracking server refused the request ({text[:200]}); set MLFLOW_TRACKING_USERNAME and "
                f"MLFLOW_TRACKING_PASSWORD for a user with access")
    return f"MLflow: {text[:300]}"


def _dispatch(args) -> int:
    from sweeps.config.loading import load_spec

    if args.command == "best":
        return _best(args)
    if args.command == "analyze":
        return _analyze(args)
    if args.command == "report":
        return _report(args)
    if args.command == "importance":
        return _importance(args)
    if args.command == "forecast":
        return _forecast(args)
    if args.command == "ui":
        return _ui(args)
    if args.command == "reproduce":
        return _reproduce(args)
    if args.command == "resume":
        from sweeps.config.loading import load_sweep_spec

        return _sweep(load_sweep_spec(args.sweep, args.storage_path), args, resume=True)
    spec = load_spec(args.spec, args.overrides)
    if args.command == "sweep":
        return _sweep(spec, args, resume=False)
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
    from sweeps.execution.failures import RunFailed
    from sweeps.execution.single_run import run_single

    outcome = run_single(spec, run_name=args.run_name, stop_after_step=args.stop_after_steps, address=args.address)
    m = outcome.metrics
    if outcome.diverged:
        raise RunFailed(f"run diverged at step {m.get('step')} (loss {m.get('loss')}); "
                        f"lower max_lr or lengthen warmup_frac. Curve: {outcome.run_dir / CURVES_FILE}")
    line = f"[rewarm] {outcome.status} at step {m.get('step')} ({m.get('tokens')} tokens)"
    if "objective" in m:
        line += (f": L_up={m['L_up']:.4f} L_down={m['L_down']:.4f} gain={m['gain']:+.4f} "
                 f"forgetting={m['forgetting']:+.4f} objective={m['objective']:+.4f}")
    print(line)
    print(f"[rewarm] curves and summary in {outcome.run_dir}")
    return 0


def _sweep(spec, args, resume: bool) -> int:
    from sweeps.execution.driver import run_sweep
    from sweeps.results.best import rank, render
    from sweeps.tracking.statuses import TrialStatus

    from sweeps.execution.progress import ProgressView

    with ProgressView() as view:  # a live panel in a terminal; plain lines in a file or pipe
        outcome = run_sweep(spec, address=args.address, resume=resume, log=view.line, progress=view)
    trials = [{"trial_id": t["trial_id"], "status": t["status"], **t["knobs"], **t["metrics"]} for t in outcome.trials]
    count = {s: sum(t["status"] == s for t in trials) for s in TrialStatus}
    print(f"[rewarm] sweep {spec.name} done: {len(trials)} trials "
          f"({count[TrialStatus.COMPLETED]} completed, {count[TrialStatus.EARLY_STOPPED]} stopped early, "
          f"{count[TrialStatus.DIVERGED]} diverged, {count[TrialStatus.FAILED]} failed)")
    print(render(rank(trials, top=5), "table"))
    print(f"[rewarm] MLflow: parent run {outcome.parent_run_id} in experiment {spec.tracking.experiment!r} at "
          f"{spec.tracking_uri()}")
    print(f"[rewarm] rank again any time: rewarm best --sweep {spec.name} | browse: rewarm ui")
    return 0


def _best(args) -> int:
    from pathlib import Path

    from sweeps.results.best import export_spec, format_bytes, rank, render
    from sweeps.tracking.records import load_sweep
    from sweeps.tracking.store import default_tracking_uri, open_client
    from sweeps.tracking.tracker import BYTES_HELD_METRIC

    client = open_client(default_tracking_uri(args.tracking_uri))
    parent, trials = load_sweep(client, args.sweep, args.experiment)
    rows = rank(trials, top=args.top, max_forgetting=args.max_forgetting, pareto=args.pareto)
    print(render(rows, args.format))
    held = parent.data.metrics.get(BYTES_HELD_METRIC)
    if held is not None:
        print(f"[rewarm] the sweep's trials hold {format_bytes(held)} on storage (after its last retention pass)",
              file=sys.stderr)
    if args.export:
        if not rows:
            raise NothingToExport("nothing to export: no trial passes the filters")
        export_spec(client, parent, rows[0], Path(args.export))
        print(f"[rewarm] wrote {args.export}: rerun with `rewarm train {args.export}`", file=sys.stderr)
    if args.register:
        from sweeps.tracking.registry import BEST_ALIAS, register_best

        if not rows:
            raise NothingToExport("nothing to register: no trial passes the filters")
        version = register_best(client, rows[0]["run_id"], args.register)
        print(f"[rewarm] registered trial {rows[0]['trial_id']} as model {args.register!r} version {version} "
              f"(alias {BEST_ALIAS!r}): load it from models:/{args.register}@{BEST_ALIAS}", file=sys.stderr)
    return 0


def _analyze(args) -> int:
    from sweeps.results.analyze import analyze_sweep, render_table, to_json
    from sweeps.tracking.store import default_tracking_uri, open_client

    result = analyze_sweep(open_client(default_tracking_uri(args.tracking_uri)), args.sweep, args.experiment)
    print(to_json(result) if args.format == "json" else render_table(result["rows"]))
    return 0


def _forecast(args) -> int:
    import json

    from sweeps.results.forecast import ForecastError, forecast_sweep, render_table, to_dict
    from sweeps.tracking.store import default_tracking_uri, open_client

    if not 0.5 < args.coverage < 1:
        raise ForecastError(f"--coverage must be between 0.5 and 1 (exclusive), got {args.coverage}")
    result = forecast_sweep(open_client(default_tracking_uri(args.tracking_uri)), args.sweep, args.experiment,
                            coverage=args.coverage)
    print(json.dumps(to_dict(result), indent=2) if args.format == "json" else render_table(result, args.top))
    return 0


def _importance(args) -> int:
    import json

    from sweeps.results.importance import log_importance, render_importance, sweep_importance
    from sweeps.tracking.store import default_tracking_uri, open_client

    uri = default_tracking_uri(args.tracking_uri)
    client = open_client(uri)
    result = sweep_importance(client, args.sweep, uri, args.experiment)
    print(json.dumps(result, indent=2) if args.format == "json" else render_importance(result))
    log_importance(client, result)
    return 0


def _report(args) -> int:
    from pathlib import Path

    from sweeps.results.report import write_report
    from sweeps.tracking.store import default_tracking_uri, open_client

    uri = default_tracking_uri(args.tracking_uri)
    page = write_report(open_client(uri), args.sweep, Path(args.out), args.experiment, tracking_uri=uri)
    print(f"[rewarm] report: {page.resolve()}")
    return 0


def _reproduce(args) -> int:
    from sweeps.reproduce.page import markdown_table, verdict
    from pathlib import Path

    from sweeps.reproduce.runner import reproduce

    out = Path(args.out)
    findings = reproduce(args.paper, out, prefix=args.name, tokens_per_trial=args.tokens_per_trial,
                         overrides=args.overrides, address=args.address)
    print(markdown_table(findings), end="")
    print(f"[rewarm] {sum(f.holds is True for f in findings)} of {len(findings)} findings hold "
          f"({', '.join(f'{f.id}: {verdict(f)}' for f in findings if f.holds is not True) or 'all'}); "
          f"report: {out / 'report.html'}")
    return 0


def _ui(args) -> int:
    import shlex
    from pathlib import Path

    from sweeps.tracking.store import default_artifact_location, default_tracking_uri, open_client, server_env

    uri = default_tracking_uri(args.tracking_uri)
    # One server worker: the UI of one user's store (its requests are served on the worker's
    # threads). MLflow's default of four spawns four server processes: ~13 CPU-s, not 3, and
    # the first answer in 9-10 s, not 6, on 2 cores.
    cmd = [str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", uri,
           "--host", "127.0.0.1", "--port", str(args.port), "--workers", "1"]
    if uri.startswith("sqlite:///"):
        cmd += ["--default-artifact-root", default_artifact_location(uri)]
    page = _ui_page(open_client(uri), args.sweep, args.port)
    env = server_env()  # the printed command carries it too: pasted, it starts the same server
    if not args.run:
        print(shlex.join([f"{k}={v}" for k, v in env.items()] + cmd))
        print(f"then open {page}")
        return 0
    print(f"[rewarm] MLflow UI starting; open {page}", flush=True)
    os.environ.update(env)
    os.execv(cmd[0], cmd)
    return 0


def _ui_page(client, sweep: str | None, port: int) -> str:
    """The UI page of the sweep's runs (else of the newest sweep's experiment).

    MLflow 3.17's UI opens every experiment on its GenAI overview ("no data") unless the page
    asks for the machine-learning view: the experiment's kind tag alone does not (checked in
    headless Chromium, docs/ARCHITECTURE.md).
    """
    from sweeps.tracking.records import load_sweep, newest_sweep_experiment

    experiment_id = load_sweep(client, sweep)[0].info.experiment_id if sweep else newest_sweep_experiment(client)
    where = f"experiments/{experiment_id}" if experiment_id else "experiments"
    return f"http://127.0.0.1:{port}/#/{where}?workflowType=machine_learning"


class NothingToExport(UserError):
    """`rewarm best --export` with no trial that passes the filters."""


if __name__ == "__main__":
    sys.exit(main())
