"""`bench-kernels`: validate a sweep spec, run the notebooks with papermill, export the report, compare two runs."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

from bench_kernels.config import ConfigError, SweepConfig

log = logging.getLogger("bench_kernels.cli")

KERNEL_NAME = "bench-kernels"
REPORT_NOTEBOOK = "90_report.ipynb"
# Not numbered: `run` leaves it out, `compare` runs it alone.
COMPARE_NOTEBOOK = "compare.ipynb"
# The kernel runs on this machine only: IPC sockets, not TCP (which the kernel warns about on every start).
LOCAL_KERNEL = {"KernelManager": {"transport": "ipc"}}
# The kernel's own log (e.g. "KeyboardInterrupt caught in kernel" when a slow machine stops it late) is noise
# to a user: cell errors still fail the run with their message.
QUIET_KERNEL = ["--IPKernelApp.log_level=CRITICAL"]


def quiet_kernel_arguments(kernel: str) -> list[str]:
    """QUIET_KERNEL, unless the kernel's spec sets a log level already (make setup's does): the kernel refuses the
    option given twice."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        argv = KernelSpecManager().get_kernel_spec(kernel).argv
    except NoSuchKernel:
        return QUIET_KERNEL  # papermill names the missing kernel itself
    return [] if any(arg.startswith("--IPKernelApp.log_level") for arg in argv) else QUIET_KERNEL


def notebooks_dir() -> Path:
    """The notebooks shipped in the package (the project's notebooks/ points here)."""
    return Path(str(resources.files("bench_kernels").joinpath("notebooks")))


def notebook_names() -> list[str]:
    """Every notebook `run` executes, in order (their names start with a number)."""
    return sorted(p.name for p in notebooks_dir().glob("[0-9][0-9]_*.ipynb"))


def _kernel_name(requested: str | None) -> str:
    """The project's registered kernel when it exists (make setup registers it), else python3."""
    if requested:
        return requested
    from jupyter_client.kernelspec import KernelSpecManager

    return KERNEL_NAME if KERNEL_NAME in KernelSpecManager().find_kernel_specs() else "python3"


def _load(path: str, reports_dir: str | None, *, measures: bool = True, here: bool = True) -> SweepConfig:
    """The validated spec; with measures, also checked against its model (lengths, prompt file, the runtimes'
    families), and when it runs here, against the device (a GPU asked for, a memory estimate)."""
    from bench_kernels.config import check_device, family_warnings, load_config
    from bench_kernels.deployments import memory_warnings

    overrides = {"reports_dir": str(Path(reports_dir).resolve())} if reports_dir else {}
    cfg = load_config(path, check_model=measures, overrides=overrides)
    if measures:
        from bench_kernels.models import resolve_model_config

        hf_config = resolve_model_config(cfg.model)
        warnings = family_warnings(cfg, hf_config)
        if here:
            check_device(cfg, path)
            warnings += memory_warnings(cfg, hf_config)
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
    return cfg


def failed_rows_summary(run_dir: Path) -> str | None:
    """One line naming the rows of a run folder whose status is error and where their tracebacks are; None when
    no row failed (unavailable rows, which say why a runtime cannot run here, are not failures)."""
    from bench_kernels.results import ResultsStore

    failed = [row for row in ResultsStore(run_dir).rows() if row.get("status") == "error"]
    if not failed:
        return None
    names = [" ".join(part for part in (row["stage"], row["runtime"], row["precision"],
                                        f"batch {row['batch_size']}" if row.get("batch_size") else "",
                                        f"input {row['input_len']}" if row.get("input_len") else "") if part)
             for row in failed]
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return (f"{len(failed)} rows failed ({shown}); their errors are in results.csv, tracebacks in "
            f"{run_dir / 'errors.log'}")


def cmd_validate(args: argparse.Namespace) -> int:
    from bench_kernels.config import defaults

    if args.show_defaults:
        from bench_kernels.runtimes import RUNTIMES

        for key, value in defaults().items():
            print(f"{key}: {value!r}")
        print("\nruntimes (runtime_options keys and defaults):")
        for name, cls in RUNTIMES.items():
            options = ", ".join(f"{k}={f.default!r}" for k, f in cls.options_class.__dataclass_fields__.items())
            families = ", ".join(cls.model_types) if cls.model_types is not None else "any that transformers loads"
            print(f"  {name:<12} {cls.description}; precisions {', '.join(cls.precisions)}; model families "
                  f"{families}; options: {options or 'none'}")
        if not args.params:
            return 0
    if not args.params:
        print("validate: give a sweep spec (params YAML) or --show-defaults", file=sys.stderr)
        return 2
    cfg = _load(args.params, None)
    shapes = len(cfg.batch_sizes) * len(cfg.input_lens) * len(cfg.precisions)
    print(f"{args.params}: valid. run_name={cfg.run_name} model={cfg.model} runtimes={','.join(cfg.runtimes)} "
          f"precisions={','.join(cfg.precisions)}; {shapes} shape{'' if shapes == 1 else 's'} per runtime; "
          f"results in {cfg.run_dir}")
    return 0


def export_report(executed_notebook: Path, html_path: Path) -> Path:
    """Export the executed report notebook to one self-contained HTML file with no code shown."""
    import nbformat
    from nbconvert import HTMLExporter

    from bench_kernels.report import offline_template_dir

    exporter = HTMLExporter(template_name="offline", extra_template_basedirs=[str(offline_template_dir())])
    exporter.exclude_input = True
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    notebook = nbformat.read(executed_notebook, as_version=4)
    body, _ = exporter.from_notebook_node(notebook, resources={"metadata": {"name": "bench_kernels report"}})
    html_path.write_text(body, encoding="utf-8")
    return html_path


def execute_notebook(name: str, executed: Path, parameters: dict[str, Any], kernel: str, verbose: bool) -> None:
    """Execute a packaged notebook with papermill: quiet (only what it prints) unless verbose."""
    import papermill
    from traitlets.config import Config

    try:
        papermill.execute_notebook(
            str(notebooks_dir() / name), str(executed), parameters=parameters, kernel_name=kernel,
            cwd=str(Path.cwd()), progress_bar=verbose, log_output=verbose,
            stdout_file=None if verbose else sys.stdout, config=Config(LOCAL_KERNEL),
            extra_arguments=[] if verbose else quiet_kernel_arguments(kernel),
        )
    except papermill.PapermillExecutionError as err:
        if err.ename == "KeyboardInterrupt":  # Ctrl-C reaches the kernel too: stop, do not go on
            raise KeyboardInterrupt from None
        raise


def cmd_run(args: argparse.Namespace) -> int:
    import papermill

    selected = [nb for nb in notebook_names() if not args.only or any(nb.startswith(p) for p in args.only)]
    if not selected:
        raise ConfigError(f"--only {' '.join(args.only)} matches no notebook; notebooks: {', '.join(notebook_names())}")
    cfg = _load(args.params, args.reports_dir, measures=selected != [REPORT_NOTEBOOK])
    run_dir = cfg.run_dir
    if args.force and run_dir.exists():
        for name in ("results.csv", "samples.jsonl", "reference_outputs", "errors.log"):
            target = run_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        print(f"--force: cleared earlier results in {run_dir}")
    out_dir = run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    parameters: dict[str, Any] = cfg.model_dump()
    kernel = _kernel_name(args.kernel)
    failed: list[str] = []
    started = time.perf_counter()
    for index, name in enumerate(selected, 1):
        print(f"[{index}/{len(selected)}] {name}", flush=True)
        try:
            execute_notebook(name, out_dir / name, parameters, kernel, args.verbose)
        except papermill.PapermillExecutionError as err:
            failed.append(name)
            print(f"  {name} failed: {err.ename}: {err.evalue}; see {out_dir / name}", file=sys.stderr)
    report_nb = out_dir / REPORT_NOTEBOOK
    if report_nb.is_file() and REPORT_NOTEBOOK not in failed and REPORT_NOTEBOOK in selected:
        html = export_report(report_nb, run_dir / "report.html")
        print(f"report: {html}")
    print(f"results: {run_dir / 'results.csv'} ({time.perf_counter() - started:.0f} s)")
    if failed:
        print(f"failed notebooks: {', '.join(failed)}", file=sys.stderr)
        return 1
    summary = failed_rows_summary(run_dir) if selected != [REPORT_NOTEBOOK] else None
    if summary:
        print(summary, file=sys.stderr)
        return 1
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """The notebooks' work without Jupyter: build stage, then each runtime's sweep (or each deployment as a
    Ray task with --ray)."""
    from bench_kernels.sweep import run_build_stage, run_sweeps

    if args.ray is not None:
        from bench_kernels.cluster import run_sweeps_on_ray

        # The GPUs are the cluster's: this machine's device and memory are not checked.
        cfg = _load(args.params, args.reports_dir, here=False)
        results = run_sweeps_on_ray(cfg, args.ray or None, skip_build=args.skip_build, progress=print)
    else:
        cfg = _load(args.params, args.reports_dir)
        if not args.skip_build:
            run_build_stage(cfg, progress=print)
        results = run_sweeps(cfg, progress=print)
        from bench_kernels.traffic.load import run_load_stage

        run_load_stage(cfg, progress=print)  # the traffic key's load runs; nothing without one
    print(f"results: {cfg.run_dir / 'results.csv'} ({len(results)} rows); render the report with: "
          f"bench-kernels run {Path(args.params).resolve()} --only 90"
          + (f" --reports-dir {Path(args.reports_dir).resolve()}" if args.reports_dir else ""))
    summary = failed_rows_summary(cfg.run_dir)
    if summary:
        print(summary, file=sys.stderr)
        return 1
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Render run B against run A into one HTML file; both folders are checked before a kernel starts."""
    import papermill

    from bench_kernels.compare import RunFolderError, compare_runs, summary_line

    run_a, run_b = Path(args.run_a).resolve(), Path(args.run_b).resolve()
    try:
        comparison = compare_runs(run_a, run_b)
    except RunFolderError as err:
        print(err, file=sys.stderr)
        return 1
    html_path = Path(args.out).resolve() if args.out else run_b / f"compare-vs-{run_a.name}.html"
    html_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        executed = Path(scratch) / COMPARE_NOTEBOOK
        try:
            execute_notebook(COMPARE_NOTEBOOK, executed, {"run_a": str(run_a), "run_b": str(run_b)},
                             _kernel_name(args.kernel), args.verbose)
        except papermill.PapermillExecutionError as err:
            print(f"{COMPARE_NOTEBOOK} failed: {err.ename}: {err.evalue} (-v shows every output)", file=sys.stderr)
            return 1
        export_report(executed, html_path)
    print(summary_line(comparison))
    print(f"comparison: {html_path}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    """List the cache's entries (size, age, what each is for), or remove them by kind, by age, or all."""
    from bench_kernels.cache import KINDS, TEMPORARY, UNKNOWN, age_text, cache_entries, remove, select
    from bench_kernels.paths import cache_root

    root = cache_root()
    entries = cache_entries(root)
    now = time.time()
    if args.action == "list":
        if args.kind or args.older_than is not None or args.all:
            raise ConfigError("cache list takes no --kind, --older-than or --all: they choose what `cache clean` "
                              "removes")
        for entry in entries:
            print(f"{entry.kind:<10} {entry.size_bytes / 1e6:>10.1f} MB {age_text(now - entry.modified):>7}  "
                  f"{entry.name}: {entry.purpose}")
        total = sum(e.size_bytes for e in entries)
        print(f"{root}: {len(entries)} entries, {total / 1e6:.1f} MB")
        return 0
    allowed = [*KINDS, TEMPORARY, UNKNOWN]
    unknown = [k for k in args.kind or [] if k not in allowed]
    if unknown:
        raise ConfigError(f"cache clean --kind: unknown kind(s) {unknown}; allowed: {', '.join(allowed)}")
    if not (args.kind or args.older_than is not None or args.all):
        raise ConfigError("cache clean removes nothing without --kind KIND, --older-than DAYS or --all")
    chosen = select(entries, args.kind, args.older_than, now)
    for entry in chosen:
        print(f"removed {entry.kind} {entry.name} ({entry.size_bytes / 1e6:.1f} MB)")
    freed = remove(chosen)
    kept = [e for e in entries if not e.removable]
    print(f"{root}: {len(chosen)} entries removed, {freed / 1e6:.1f} MB freed"
          + (f"; {len(kept)} temporaries of running writers kept" if kept else ""))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from bench_kernels.architecture import preset_names, presets_dir

    for name in preset_names():
        first = (presets_dir() / f"{name}.yaml").read_text().splitlines()[0].lstrip("# ")
        print(f"preset:{name:<16} {first}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show every notebook output and debug messages")
    parser = argparse.ArgumentParser(
        prog="bench-kernels", parents=[common],
        description="Measure how to serve an LLM (the reference PyTorch path, compiled PyTorch, ONNX Runtime, "
                    "TensorRT) for one model and workload, and render the decision report. A sweep is a params "
                    "YAML whose keys are the notebooks' parameter names (`bench-kernels validate --show-defaults` "
                    "lists them); relative paths in it are taken from its own folder; results go to "
                    "<reports_dir>/<run_name>/.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", parents=[common],
                         help="validate PARAMS, run the notebooks with papermill, export report.html",
                         description="Validate PARAMS, execute the notebooks in order with its keys as parameters "
                                     "(executed copies in <run dir>/notebooks/), then export the report notebook "
                                     "to <run dir>/report.html. Finished rows in results.csv are kept: a rerun "
                                     "measures only what is missing.")
    run.add_argument("params", help="sweep spec, e.g. params/default.yaml")
    run.add_argument("--force", action="store_true",
                     help="discard earlier results of this run and measure everything again")
    run.add_argument("--reports-dir", help="override the spec's reports_dir (where <run_name>/ is written)")
    run.add_argument("--only", nargs="+", metavar="PREFIX",
                     help="run only the notebooks whose names start with these prefixes, e.g. --only 20 90 "
                          "(--only 90 renders the report from results.csv alone)")
    run.add_argument("--kernel",
                     help=f"Jupyter kernel to execute with (default: {KERNEL_NAME} if registered, else python3)")
    run.set_defaults(func=cmd_run)

    sweep = sub.add_parser("sweep", parents=[common],
                           help="run the build stage and every runtime's sweep without Jupyter",
                           description="Headless: the same build and sweep functions the notebooks call, for "
                                       "machines without Jupyter (results.csv only; render the report later "
                                       "with `run PARAMS --only 90`).")
    sweep.add_argument("params", help="sweep spec, e.g. params/default.yaml")
    sweep.add_argument("--reports-dir", help="override the spec's reports_dir")
    sweep.add_argument("--skip-build", action="store_true", help="skip the build stage rows")
    sweep.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                       help="run each deployment (runtime, precision, tensor-parallel degree) as a Ray task asking for "
                            "the GPUs it uses: on the cluster at ADDRESS (e.g. 'auto' for the one this node joined "
                            "with `ray start`, or 'ray://head:10001'), or without ADDRESS on a Ray instance started "
                            "here; every node must see the results folder at the same path")
    sweep.set_defaults(func=cmd_sweep)

    validate = sub.add_parser("validate", parents=[common], help="check a sweep spec without running anything",
                              description="Check every key of PARAMS (types, allowed values, bounds, files, lengths "
                                          "against the model's maximum positions, the device) and warn when a shape "
                                          "would not fit the device's memory; exit 1 with the problems listed.")
    validate.add_argument("params", nargs="?", help="sweep spec, e.g. params/default.yaml")
    validate.add_argument("--show-defaults", action="store_true",
                          help="print every key with its default, and each runtime's options")
    validate.set_defaults(func=cmd_validate)

    compare = sub.add_parser("compare", parents=[common], help="render run B against run A: per-shape ratios, "
                             "changes beyond the runs' spread, provenance differences",
                             description="Compare two run folders (each holding the results.csv and samples.jsonl a "
                                         "sweep writes): ratios B / A per shape of tokens/s, TTFT, per-token latency, "
                                         "latency, peak memory and perplexity, flagged only where |B - A| exceeds "
                                         "the larger of the two runs' spreads (interquartile range of the raw "
                                         "samples), and the provenance fields that differ. Executes "
                                         f"{COMPARE_NOTEBOOK} with papermill and exports one self-contained HTML "
                                         "file; prints one summary line and where the file is.")
    compare.add_argument("run_a", metavar="RUN_A", help="the baseline run folder, e.g. reports/h100-llama3.1-8b-trt")
    compare.add_argument("run_b", metavar="RUN_B", help="the run compared with it (ratios are B / A)")
    compare.add_argument("--out", metavar="PATH",
                         help="the HTML file to write (default: RUN_B/compare-vs-<name of RUN_A>.html)")
    compare.add_argument("--kernel",
                         help=f"Jupyter kernel to execute with (default: {KERNEL_NAME} if registered, else python3)")
    compare.set_defaults(func=cmd_compare)

    cache = sub.add_parser("cache", parents=[common], help="list the cache (sizes, what each entry is for) or clean it",
                           description="The on-disk cache ($BENCH_KERNELS_CACHE, default ~/.cache/bench_kernels): the "
                                       "converted embedded model, ONNX exports, TensorRT engines, AWQ scales, and "
                                       "temporaries of unfinished writes. `cache` lists each entry with its size, "
                                       "when it was last written and what it is for; `cache clean` removes entries "
                                       "by kind, by age, or all (never a temporary whose writer still runs). A "
                                       "removed entry is built again when a run needs it.")
    cache.add_argument("action", nargs="?", choices=["list", "clean"], default="list")
    cache.add_argument("--kind", nargs="+", metavar="KIND",
                       help="clean only these kinds: models, onnx, engines, awq, temporary, unknown")
    cache.add_argument("--older-than", type=float, metavar="DAYS", help="clean only entries last written before then")
    cache.add_argument("--all", action="store_true", help="clean every entry")
    cache.set_defaults(func=cmd_cache)

    presets = sub.add_parser("presets", parents=[common], help="list the architecture presets for random-weight runs",
                             description="List the packaged presets, usable as model: preset:<name>.")
    presets.set_defaults(func=cmd_presets)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.verbose = getattr(args, "verbose", False)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted{_resume_hint(args)}", file=sys.stderr)
        return 130


def _resume_hint(args: argparse.Namespace) -> str:
    """': N rows kept in <results.csv>; run the same command again to resume' for run and sweep."""
    if args.command not in ("run", "sweep"):
        return ""
    from bench_kernels.results import FINISHED, ResultsStore

    try:
        store = ResultsStore(_load(args.params, args.reports_dir, measures=False).run_dir)
    except ConfigError:
        return ""
    kept = sum(row.get("status") in FINISHED for row in store.rows())
    return f": {kept} finished rows kept in {store.csv_path}; run the same command again to resume"


if __name__ == "__main__":
    sys.exit(main())
