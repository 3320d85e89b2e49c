"""Shared fixtures: tests run from the project root with a cache of their own; a tiny random-weight model as a
local HF folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.cache import use_test_cache
from tests.embedded import embedded_fp32_model

ROOT = Path(__file__).resolve().parents[1]
use_test_cache()  # before any test (or subprocess it starts) converts, exports or builds anything


def _share_the_cores() -> None:
    """Each pytest-xdist worker, and every process it starts (OMP_NUM_THREADS is inherited), gets its share of the
    cores. torch's thread pools spin while they wait: on this 2-core machine, a 30-layer step of 576-wide linear layers
    took 206 ms in each of two processes of two threads, 44 ms with one thread each."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    threads = max(1, (os.cpu_count() or 1) // workers)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


_share_the_cores()

# The longest files first (measured on a 2-core machine, cold): pytest-xdist hands out whole files (--dist loadfile)
# in collection order when told not to reorder them (--no-loadscope-reorder; by default it puts the files with the
# most tests first), and a long file handed out last keeps one worker busy while the others have nothing left.
# With two workers (make test: -n 2) the end-to-end file takes one; the others follow on the second, then on both.
LONGEST_FIRST = ("test_pipeline.py", "test_cli.py", "runtimes/compiled/test_tensor_parallel.py", "test_cluster.py",
                 "test_quantization.py", "runtimes/compiled/test_runtime.py", "test_decoder.py",
                 "runtimes/onnxruntime/test_runtime.py", "test_sweep.py", "test_report.py",
                 "test_committed_reports.py", "test_onnx_export.py")
TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: place for place, name in enumerate(LONGEST_FIRST)}
    # stable: the others keep their order
    items.sort(key=lambda item: rank.get(item.path.relative_to(TESTS).as_posix(), len(rank)))


@pytest.fixture(autouse=True)
def _run_from_project_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative paths (params/, reports/) resolve against the project root, as in real use."""
    monkeypatch.chdir(ROOT)


def save_random_llama(folder: Path, **sizes: int) -> Path:
    """A Llama with random weights (seed 0) of the given sizes and the packaged tokenizer, saved as a local Hugging
    Face folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from bench_kernels.models import packaged_tokenizer

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=49152, max_position_embeddings=4096, **sizes)).save_pretrained(folder)
    packaged_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_local_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama with random weights saved as a local Hugging Face folder."""
    return save_random_llama(tmp_path_factory.mktemp("tiny-llama"), hidden_size=64, intermediate_size=128,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture(scope="session")
def embedded_fp32_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """The embedded model's decoder exported in fp32 once per test run into a fresh cache folder: (record, folder).

    The entry is also placed in the tests' cache under the name export_model gives it, so the runtimes' later
    exports of this model (ONNX Runtime, TensorRT, the end-to-end run) find it instead of exporting again."""
    from bench_kernels.decoder import Decoder
    from bench_kernels.onnx_export import export_decoder
    from bench_kernels.paths import cache_dir

    loaded = embedded_fp32_model()
    folder = tmp_path_factory.mktemp("onnx_cache")
    record = export_decoder(Decoder.from_hf(loaded.hf_model), f"{loaded.name}-{loaded.weights_id}", "fp32", folder)
    cached = cache_dir("onnx") / record.path.parent.name
    if not cached.exists():
        staging = cached.with_name(f".tmp-{cached.name}-tests")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(record.path.parent, staging)
        try:
            staging.rename(cached)
        except OSError:  # another run placed it first
            shutil.rmtree(staging)
    return record, folder
