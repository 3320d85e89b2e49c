"""The one byte model and the precision table: decode bytes worked by hand, and committed rows recomputed."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench_kernels.architecture import preset_fields
from bench_kernels.precisions import INT4_PRECISIONS, MATMUL_PRECISIONS, PRECISIONS
from bench_kernels.roofline import (RECOMPUTED_NOTE, architecture_decode_weight_bytes, decode_columns,
                                    decode_step_bytes, mean_kv_len, recompute_results_csv, recompute_rows,
                                    streaming_gbps)

ROOT = Path(__file__).resolve().parents[1]
LLAMA_8B = SimpleNamespace(**preset_fields("llama-3.1-8b"))
# Llama-3.1-8B by hand: 32 layers of q, k, v, o (4096 x 4096, 2 x 1024 x 4096, 4096 x 4096) and gate, up, down
# (3 x 4096 x 14336); an untied 128256 x 4096 embedding and LM head; 65 norms of 4096.
PROJECTIONS = 32 * (4096 * 128 * (2 * 32 + 2 * 8) + 3 * 4096 * 14336)
TABLE = 128256 * 4096
NORMS = 65 * 4096


def test_precision_table_answers_what_the_old_copies_did() -> None:
    assert MATMUL_PRECISIONS == ("fp32", "fp16", "bf16", "fp8", "int8")
    assert INT4_PRECISIONS == ("int4", "int4-awq")
    assert PRECISIONS["int4"].projection_bytes == 0.5 + 2 / 128 and PRECISIONS["fp8"].projection_bytes == 1.0
    assert [p for p, entry in PRECISIONS.items() if not entry.quantized] == ["fp32", "fp16", "bf16"]
    assert {p: entry.unquantized_bytes for p, entry in PRECISIONS.items()} == {
        "fp32": 4, "fp16": 2, "bf16": 2, "fp8": 2, "int8": 2, "int4": 2, "int4-awq": 2}


def test_llama_8b_batch_1_step_reads_each_matrix_once_and_one_embedding_row() -> None:
    assert PROJECTIONS == 6_979_321_856
    bf16 = 2 * (PROJECTIONS + TABLE + NORMS) + 2 * 4096  # LM head whole, one embedding row
    fp8 = PROJECTIONS + 2 * (TABLE + NORMS) + 2 * 4096
    int4 = PROJECTIONS // 2 + PROJECTIONS // 128 * 2 + 2 * (TABLE + NORMS) + 2 * 4096  # a bf16 scale per 128
    assert architecture_decode_weight_bytes(LLAMA_8B, "bf16", 1) == bf16
    assert architecture_decode_weight_bytes(LLAMA_8B, "fp8", 1) == fp8
    assert architecture_decode_weight_bytes(LLAMA_8B, "int4", 1) == int4
    assert (round(bf16 / 1e9, 2), round(fp8 / 1e9, 2), round(int4 / 1e9, 2)) == (15.01, 8.03, 4.65)
    # The whole-table model counted 16.06 GB in bf16: the embedding table less one row more.
    assert 2 * (PROJECTIONS + 2 * TABLE + NORMS) - bf16 == 2 * 4096 * (128256 - 1)


def test_embedding_rows_grow_with_the_batch_and_a_tied_embedding_is_read_whole() -> None:
    one, eight = (architecture_decode_weight_bytes(LLAMA_8B, "bf16", b) for b in (1, 8))
    assert eight - one == 7 * 4096 * 2
    smollm2 = SimpleNamespace(**preset_fields("smollm2-135m"))
    assert smollm2.tie_word_embeddings
    assert architecture_decode_weight_bytes(smollm2, "bf16", 1) == architecture_decode_weight_bytes(smollm2, "bf16", 8)


def test_kv_cache_counts_its_mean_length_over_the_measured_steps() -> None:
    assert mean_kv_len(128, 128) == sum(range(128, 256)) / 128  # lengths input_len .. input_len + output_len - 1
    assert mean_kv_len(100, 1) == 100
    assert decode_step_bytes(1000, 10, 4, 128, 128) == 1000 + 4 * 10 * 191.5


def test_decode_columns_and_the_faster_bandwidth() -> None:
    assert streaming_gbps(3000.0, 3050.0) == 3050.0 and streaming_gbps(3000.0, float("nan")) == 3000.0
    columns = decode_columns(8e9, 1, itl_ms_p50=4.0, bandwidth_gbps=4000, gpu_name="NVIDIA H100 80GB HBM3")
    assert columns["roofline_tokens_per_s"] == pytest.approx(500) and columns["efficiency"] == pytest.approx(0.5)
    assert columns["decode_gbps"] == pytest.approx(2000) and columns["mbu"] == pytest.approx(2000 / 3350)


def _old_row(**changes: str) -> dict[str, str]:
    """A compiled fp8 row whose roofline counted the whole embedding table, as the sweep wrote it before."""
    batch, itl_ms, bandwidth = 4, 5.0, 3000.0
    kv = 2 * 32 * 8 * 128 * 2 * mean_kv_len(128, 128) * batch
    old_bytes = PROJECTIONS + 2 * (2 * TABLE + NORMS) + kv
    old = decode_columns(old_bytes, batch, itl_ms, bandwidth, "NVIDIA H100 80GB HBM3")
    row = {"stage": "inference", "status": "ok", "runtime": "compiled", "model": "llama-3.1-8b", "precision": "fp8",
           "gpu_count": "1", "batch_size": "4", "input_len": "128", "output_len": "128", "itl_ms_p50": str(itl_ms),
           "copy_gbps": "2900.0", "read_gbps": str(bandwidth), "link_gbps": "", "gpu_name": "NVIDIA H100 80GB HBM3",
           "tokens_per_s": "800.0", "notes": "", **{k: repr(v) for k, v in old.items()}}
    return {**row, **changes}


def test_a_stored_row_is_recomputed_with_the_batch_rows_only_and_once() -> None:
    row = _old_row()
    (new,), problems = recompute_rows([row], lambda model: LLAMA_8B)
    assert problems == []
    kv = 2 * 32 * 8 * 128 * 2 * mean_kv_len(128, 128) * 4
    expected = decode_columns(architecture_decode_weight_bytes(LLAMA_8B, "fp8", 4) + kv, 4, 5.0, 3000.0,
                              "NVIDIA H100 80GB HBM3")
    for column, value in expected.items():
        assert float(new[column]) == pytest.approx(value, rel=1e-12), column
    assert float(new["efficiency"]) < float(row["efficiency"])  # fewer bytes: a higher bound
    assert {k: v for k, v in new.items() if k not in expected and k != "notes"} == \
        {k: v for k, v in row.items() if k not in expected and k != "notes"}  # measured figures untouched
    assert RECOMPUTED_NOTE in new["notes"]
    assert recompute_rows([new], lambda model: LLAMA_8B)[0] == [new]  # a second pass changes nothing


def test_rows_that_cannot_be_recomputed_exactly_are_named_and_kept() -> None:
    exported = _old_row(runtime="onnxruntime")
    no_gbps = _old_row(decode_gbps="", link_gbps="150.0", gpu_count="2")
    no_bandwidth = _old_row(copy_gbps="", read_gbps="")
    rows, problems = recompute_rows([exported, no_gbps, no_bandwidth], lambda model: LLAMA_8B)
    assert rows == [exported, no_gbps, no_bandwidth]
    assert len(problems) == 3 and "onnxruntime rows do not record" in problems[0]
    assert "link time cannot be separated" in problems[1] and "no copy or read bandwidth" in problems[2]
    tied = SimpleNamespace(**preset_fields("smollm2-135m"))
    assert recompute_rows([exported], lambda model: tied) == ([exported], [])  # both models read a tied table


def test_an_old_schema_row_recovers_its_bytes_from_the_bound(tmp_path: Path) -> None:
    """Rows from before decode_gbps and read_gbps: the bound was the bytes over the copy bandwidth."""
    row = _old_row()
    old_bytes = 4 * 3000.0 * 1e9 / float(row["roofline_tokens_per_s"])
    row = {k: v for k, v in row.items() if k not in ("decode_gbps", "mbu", "read_gbps")}
    row["copy_gbps"] = "3000.0"
    (new,), _ = recompute_rows([row], lambda model: LLAMA_8B)
    new_bytes = old_bytes - (128256 - 4) * 4096 * 2
    assert float(new["roofline_tokens_per_s"]) == pytest.approx(4 * 3000.0 * 1e9 / new_bytes, rel=1e-12)
    assert set(new) == set(row)  # no column added to an old table


def test_recomputing_a_committed_results_file_changes_only_roofline_cells(tmp_path: Path) -> None:
    committed = ROOT / "reports" / "h100-llama3.1-8b" / "results.csv"
    path = tmp_path / "results.csv"
    shutil.copy(committed, path)
    assert recompute_results_csv(path) == []
    assert path.read_bytes() == committed.read_bytes()  # committed rows are recomputed already: nothing moves
    with committed.open(newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["stage"] == "inference" and r["status"] == "ok"]
    assert rows and all(RECOMPUTED_NOTE in r["notes"] for r in rows)
    assert max(float(r["efficiency"]) for r in rows) < 1.0
