"""Tensor parallelism on the CPU: ranks are real processes in a gloo group, started by the runtime itself.

The embedded SmolLM2 has 9 query and 3 KV heads, which do not divide by 2: its heads split by KV-head
groups, 2 + 1 (6 + 3 query heads); a 2-layer random model of those heads stands in for it where the compiled
graphs would take minutes to build. The tiny Llama (4 and 2 heads) splits evenly.
"""

from __future__ import annotations

import re
from pathlib import Path

import psutil
import pytest
import torch

from bench_kernels.config import parse_config
from bench_kernels.runtimes.compiled import CompiledOptions, CompiledRuntime
from bench_kernels.runtimes.compiled.sharding import Shard, check_split, split_description
from bench_kernels.sweep import run_inference_sweep
from tests.conftest import save_random_llama

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def uneven_local_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2's heads (9 query, 3 KV: they split 6+3 and 2+1 over two ranks) in a 2-layer random Llama."""
    return save_random_llama(tmp_path_factory.mktemp("uneven-llama"), hidden_size=144, intermediate_size=384,
                             num_hidden_layers=2, num_attention_heads=9, num_key_value_heads=3)


def rank_processes() -> list[psutil.Process]:
    """This test process's tensor-parallel ranks still alive (other children, e.g. compile workers, aside)."""
    ranks = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "bench_kernels.runtimes.compiled.tensor_parallel" in " ".join(child.cmdline()):
                ranks.append(child)
        except psutil.Error:  # a child that exited meanwhile
            continue
    return ranks


def test_shards_split_like_tensor_split_and_keep_query_heads_with_their_kv_heads():
    for total, world in ((9, 2), (3, 2), (1536, 2), (64, 8), (7, 4)):
        spans = [Shard(rank, world, "").span(total) for rank in range(world)]
        assert [length for _, length in spans] == [len(part) for part in torch.arange(total).tensor_split(world)]
        assert [start for start, _ in spans] == [int(part[0]) for part in torch.arange(total).tensor_split(world)]
    smollm2 = [Shard(rank, 2, "").query_heads(9, 3) for rank in range(2)]
    assert smollm2 == [(0, 6), (6, 3)]  # KV heads 0-1 with query heads 0-5, KV head 2 with query heads 6-8
    assert Shard(1, 2, "").padded_vocab(49153) == 24577
    assert split_description(9, 3, 1536, 2) == "query heads 6+3, KV heads 2+1, MLP features 768+768 (uneven)"
    assert split_description(64, 8, 28672, 2) == "query heads 32+32, KV heads 4+4, MLP features 14336+14336"
    with pytest.raises(ValueError, match="at most 3 ranks"):
        check_split(9, 3, 4)


def _runtime(model: str, degree: int, compile_: bool) -> CompiledRuntime:
    options = CompiledOptions(tensor_parallel=degree, compile=compile_)
    return CompiledRuntime(CompiledRuntime.load(model, "fp32", CPU, 0, options), "fp32", CPU, options)


def test_tensor_parallel_2_matches_1_with_uneven_heads(uneven_local_model: Path):
    """Compiled (torch.compile, the collectives traced inside), split 6+3 heads over two gloo ranks: the same
    16 greedy tokens as one eager process (the functions torch.compile gets), first-step logits within 1e-4."""
    ids = torch.tensor([[504, 3458, 282, 260, 1789, 314, 216, 1064, 28, 339, 253, 2380],
                        [19, 2329, 30, 378, 4063, 282, 5358, 314, 1345, 8204, 30, 339]])
    model = f"local:{uneven_local_model}"
    one, two = _runtime(model, 1, False), _runtime(model, 2, True)
    try:
        one.prepare([2], [12], 16)
        build = two.prepare([2], [12], 16)
        assert two.link_gbps > 0 and "query heads 6+3, KV heads 2+1" in build.notes
        # 2 layers: 4 all-reduces a decode step, each timed (gloo on this CPU: tens of microseconds or more).
        latency = re.search(r"decode step's 4 all-reduces take ([0-9.]+) us each", build.notes)
        assert latency and float(latency.group(1)) > 0, build.notes
        single, split = one.measure(ids, 16, 0, 1), two.measure(ids, 16, 0, 1)
        assert torch.equal(split.last_output, single.last_output), (split.last_output, single.last_output)
        difference = (two.first_step_logits(ids) - one.first_step_logits(ids)).abs().max().item()
        assert difference < 1e-4
        # Each rank holds its share: fewer bytes than the whole model, KV cache of its 2 (of 3) KV heads.
        assert two.weight_bytes() < one.weight_bytes()
        assert two.kv_bytes_per_token() == one.kv_bytes_per_token() * 2 // 3
        assert two.link_bytes_per_decode_step(2) > 0 == one.link_bytes_per_decode_step(2)
        assert split.peak_mem_gb_per_gpu < split.peak_mem_gb  # two processes' peaks, the larger one per GPU
    finally:
        one.close()
        two.close()
    assert not rank_processes(), "the ranks must have exited"


def _sweep(tmp_path: Path, model: Path, **options) -> dict:
    return dict(run_name="tp", model=f"local:{model}", runtimes=["reference", "compiled"], precisions=["fp32"],
                batch_sizes=[1, 2], input_lens=[8], output_len=6, warmup=0, repeats=2, device="cpu",
                reports_dir=str(tmp_path), perplexity_windows=1,
                runtime_options={"compiled": {"compile": False, **options}})


def test_sweep_measures_each_degree_as_its_own_rows(tmp_path: Path, tiny_local_model: Path):
    """tensor_parallel [1, 2]: rows keyed by gpu_count, both matching the reference token for token, the
    split one with its link bandwidth and per-GPU memory."""
    cfg = parse_config(_sweep(tmp_path, tiny_local_model, tensor_parallel=[1, 2]))
    for runtime in cfg.runtimes:
        df = run_inference_sweep(cfg, runtime)
    compiled = df[(df.stage == "inference") & (df.runtime == "compiled")].set_index(["gpu_count", "batch_size"])
    assert sorted(compiled.index) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert (compiled.status == "ok").all(), compiled[["status", "error"]]
    assert (compiled.token_agreement == 1.0).all() and (compiled.max_logit_diff < 1e-4).all()
    assert compiled.loc[2, "runtime_options"].str.startswith("tensor_parallel=2").all()
    assert (compiled.loc[2, "link_gbps"] > 0).all() and compiled.loc[1, "link_gbps"].isna().all()
    assert (compiled.loc[2, "peak_mem_gb_per_gpu"] < compiled.loc[2, "peak_mem_gb"]).all()
    assert (compiled.loc[1, "peak_mem_gb_per_gpu"] == compiled.loc[1, "peak_mem_gb"]).all()
    build = df[(df.stage == "build") & (df.runtime == "compiled")].set_index("gpu_count")
    assert "query heads 2+2, KV heads 1+1" in build.loc[2, "notes"]


def test_more_ranks_than_kv_heads_are_unavailable_rows(tmp_path: Path, tiny_local_model: Path):
    cfg = parse_config({**_sweep(tmp_path, tiny_local_model, tensor_parallel=4), "runtimes": ["compiled"]})
    df = run_inference_sweep(cfg, "compiled")
    assert (df.status == "unavailable").all() and (df.gpu_count == 4).all()
    assert df.error.str.contains("needs at least one KV head per rank").all()


def test_ranks_that_do_not_answer_in_time_become_error_rows(tmp_path: Path, tiny_local_model: Path):
    """A 1 s limit is shorter than starting a rank (importing torch): the ranks are stopped, every row says why."""
    cfg = parse_config({**_sweep(tmp_path, tiny_local_model, tensor_parallel=2, worker_timeout_s=1.0),
                        "runtimes": ["compiled"]})
    df = run_inference_sweep(cfg, "compiled")
    assert (df.status == "error").all()
    assert df.error.str.contains("did not finish start within 1 s").all()
    assert not rank_processes(), "the ranks must have been stopped"


def test_tensor_parallel_option_is_validated():
    for bad, message in ((3, "tensor_parallel"), ([2, 2], "degrees must be unique"), ([], "at least 1")):
        with pytest.raises(Exception, match=message):
            parse_config({"runtime_options": {"compiled": {"tensor_parallel": bad}}})
    cfg = parse_config({"runtime_options": {"compiled": {"tensor_parallel": [2, 1]}}})
    assert [o.tensor_parallel for o in CompiledRuntime.shard_options(cfg.options_for("compiled"))] == [2, 1]
