"""Specified bandwidths by device name, and MBU from them."""

from __future__ import annotations

import pytest

from bench_kernels.gpu_specs import mbu, specified_bandwidth_gbps


def test_mbu_divides_by_the_data_sheet_bandwidth_of_the_named_card() -> None:
    # The names torch reported on this project's H100 and H200 machines (committed reports' gpu_name).
    assert specified_bandwidth_gbps("NVIDIA H100 80GB HBM3") == 3_350.0
    assert specified_bandwidth_gbps("NVIDIA H200") == 4_800.0
    assert mbu(2_680.0, "NVIDIA H100 80GB HBM3") == pytest.approx(0.8)
    assert specified_bandwidth_gbps("NVIDIA A100-SXM4-80GB") == 2_039.0
    assert specified_bandwidth_gbps("nvidia l4") == 300.0  # case does not matter; L40S is its own card
    assert specified_bandwidth_gbps("NVIDIA L40S") == 864.0


def test_no_mbu_for_a_card_not_in_the_table_or_the_cpu() -> None:
    assert mbu(500.0, "NVIDIA GeForce RTX 4090 Laptop GPU") is None  # a laptop part: not its desktop namesake
    assert mbu(50.0, "") is None
