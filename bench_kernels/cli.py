"""`bench-kernels`: validate a sweep spec, run the notebooks with papermill, export the HTML report."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench_kernels.config import SweepConfig

log = logging.getLogger("bench_kernels.cli")

NOTEBOOKS = (
    "00_environment.ipynb",
    "10_build.ipynb",
    "20_reference_sweep.ipynb",
    "25_onnxruntime_sweep.ipynb",
    "30_tensorrt_sweep.ipynb",
    "40_compiled_sweep.ipynb",
    "90_report.ipynb",
)
KERNEL_NAME = "bench-kernels"


def _notebooks_dir() -> Path:
    from bench_kernels.paths import project_root

    return project_root() / "notebooks"


def _kernel_name(requested: str | None) -> str:
    """The project's registered kernel when it exists (make setup registers it), else python3."""
    if requested:
        return requested
    from jupyter_client.kernelspec import KernelSpecManager

    return KERNEL_NAME if KERNEL_NAME in KernelSpecManager().find_kernel_specs() else "python3"


def _load(path: str, reports_dir: str | None) -> SweepConfig:
    from bench_kernels.config import load_config, parse_config, validate_model

    cfg = load_config(path, check_model=False)
    if reports_dir:
        cfg = parse_config({**cfg.model_dump(), "reports_dir": reports_dir}, path)
    validate_model(cfg, path)
    return cfg


def cmd_validate(args: argparse.Namespace) -> int:
    cfg = _load(args.params, None)
    shapes = len(cfg.batch_sizes) * len(cfg.input_lens) * len(cfg.precisions)
    print(f"{args.params}: valid. run_name={cfg.run_name} model={cfg.model} runtimes={','.join(cfg.runtimes)} "
          f"precisions={','.join(cfg.precisions)}; {shapes} shapes per runtime; results in {cfg.run_dir}")
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


def cmd_run(args: argparse.Namespace) -> int:
    import papermill

    cfg = _load(args.params, args.reports_dir)
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
    selected = [nb for nb in NOTEBOOKS if not args.only or any(nb.startswith(p) for p in args.only)]
    failed: list[str] = []
    started = time.perf_counter()
    for index, name in enumerate(selected, 1):
        print(f"[{index}/{len(selected)}] {name} (kernel {kernel})", flush=True)
        try:
            papermill.execute_notebook(
                str(_notebooks_dir() / name), str(out_dir / name), parameters=parameters, kernel_name=kernel,
                cwd=str(_notebooks_dir().parent), progress_bar=args.progress, log_output=True,
            )
        except papermill.PapermillExecutionError as err:
            failed.append(name)
            print(f"  {name} failed: {err.ename}: {err.evalue}; see {out_dir / name}", file=sys.stderr)
    report_nb = out_dir / "90_report.ipynb"
    if report_nb.is_file() and "90_report.ipynb" not in failed and "90_report.ipynb" in selected:
        html = export_report(report_nb, run_dir / "report.html")
        print(f"report: {html}")
    print(f"results: {run_dir / 'results.csv'} ({time.perf_counter() - started:.0f} s)")
    if failed:
        print(f"failed notebooks: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """The notebooks' work without Jupyter: build stage, then each runtime's sweep."""
    from bench_kernels.sweep import run_build_stage, run_inference_sweep

    cfg = _load(args.params, args.reports_dir)
    if not args.skip_build:
        run_build_stage(cfg, progress=print)
    for runtime in cfg.runtimes:
        results = run_inference_sweep(cfg, runtime, progress=print)
    print(f"results: {cfg.run_dir / 'results.csv'} ({len(results)} rows); "
          f"render the report with: bench-kernels run {args.params} --only 90")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from bench_kernels.models import presets_dir, preset_names

    for name in preset_names():
        first = (presets_dir() / f"{name}.yaml").read_text().splitlines()[0].lstrip("# ")
        print(f"preset:{name:<16} {first}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench-kernels",
        description="Measure TensorRT against the reference PyTorch path for one model and workload. "
                    "A sweep is a params YAML whose keys are the notebooks' parameter names "
                    "(see params/default.yaml); results go to <reports_dir>/<run_name>/.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="validate PARAMS, run the notebooks with papermill, export report.html",
                         description="Validate PARAMS, execute the notebooks in order with its keys as parameters "
                                     "(executed copies in <run dir>/notebooks/), then export the report notebook "
                                     "to <run dir>/report.html. Finished rows in results.csv are kept: a rerun "
                                     "measures only what is missing.")
    run.add_argument("params", help="sweep spec, e.g. params/default.yaml")
    run.add_argument("--force", action="store_true", help="discard earlier results of this run and measure everything again")
    run.add_argument("--reports-dir", help="override the spec's reports_dir (where <run_name>/ is written)")
    run.add_argument("--only", nargs="+", metavar="PREFIX",
                     help="run only the notebooks whose names start with these prefixes, e.g. --only 20 90")
    run.add_argument("--kernel", help=f"Jupyter kernel to execute with (default: {KERNEL_NAME} if registered, else python3)")
    run.add_argument("--no-progress", dest="progress", action="store_false", help="hide papermill's per-cell progress bar")
    run.set_defaults(func=cmd_run)

    sweep = sub.add_parser("sweep", help="run the build stage and every runtime's sweep without Jupyter",
                           description="Headless: the same build and sweep functions the notebooks call, for "
                                       "machines without Jupyter (results.csv only; render the report later "
                                       "with `run PARAMS --only 90`).")
    sweep.add_argument("params", help="sweep spec, e.g. params/default.yaml")
    sweep.add_argument("--reports-dir", help="override the spec's reports_dir")
    sweep.add_argument("--skip-build", action="store_true", help="skip the build stage rows")
    sweep.set_defaults(func=cmd_sweep)

    validate = sub.add_parser("validate", help="check a sweep spec without running anything",
                              description="Check every key of PARAMS (types, allowed values, lengths against the "
                                          "model's maximum positions); exit 1 with the problems listed.")
    validate.add_argument("params", help="sweep spec, e.g. params/default.yaml")
    validate.set_defaults(func=cmd_validate)

    presets = sub.add_parser("presets", help="list the architecture presets for random-weight runs",
                             description="List params/models/*.yaml, usable as model: preset:<name>.")
    presets.set_defaults(func=cmd_presets)
    return parser


class _CellMarkersFilter(logging.Filter):
    """Keep papermill's streamed notebook output (our sweep progress), drop its per-cell markers."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith(("Executing Cell", "Ending Cell", "Executing notebook", "Executing: "))
                    or message.startswith("Input notebook") or message.startswith("Output notebook"))


def main(argv: list[str] | None = None) -> int:
    from bench_kernels.config import ConfigError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    logging.getLogger("papermill").addFilter(_CellMarkersFilter())
    try:
        return args.func(args)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
