"""Torch-free facts from NVIDIA's data sheets: each card's specified memory bandwidth, for MBU.

MBU (model bandwidth utilization, as PyTorch's "Accelerating Generative AI with PyTorch II: GPT, Fast" defines it)
is the bytes a decode step reads per second over the card's *specified* bandwidth, so figures compare across
publications; the efficiency column divides by the bandwidth measured on the card instead.
"""

from __future__ import annotations

# Device name as torch reports it (torch.cuda.get_device_name) -> specified memory bandwidth in GB/s. Exact names:
# a laptop or cut-down variant differs in bandwidth and must not borrow its desktop namesake's figure.
SPECIFIED_BANDWIDTH_GBPS: dict[str, float] = {
    "NVIDIA H100 80GB HBM3": 3_350.0,  # NVIDIA H100 Tensor Core GPU data sheet, H100 SXM: 3.35 TB/s
    "NVIDIA H100 PCIe": 2_000.0,  # NVIDIA H100 PCIe product brief PB-11133-001: 2.0 TB/s (HBM2e)
    "NVIDIA H100 NVL": 3_900.0,  # NVIDIA H100 data sheet, H100 NVL: 3.9 TB/s (94 GB HBM3)
    "NVIDIA H200": 4_800.0,  # NVIDIA H200 Tensor Core GPU data sheet, H200 SXM: 4.8 TB/s (141 GB HBM3e)
    "NVIDIA H200 NVL": 4_800.0,  # the same data sheet, H200 NVL: 4.8 TB/s
    "NVIDIA A100-SXM4-80GB": 2_039.0,  # NVIDIA A100 data sheet, A100 80GB SXM: 2,039 GB/s (HBM2e)
    "NVIDIA A100 80GB PCIe": 1_935.0,  # the same data sheet, A100 80GB PCIe: 1,935 GB/s
    "NVIDIA A100-SXM4-40GB": 1_555.0,  # the same data sheet, A100 40GB: 1,555 GB/s (HBM2)
    "NVIDIA A100-PCIE-40GB": 1_555.0,  # the same data sheet, A100 40GB PCIe: 1,555 GB/s
    "NVIDIA L40S": 864.0,  # NVIDIA L40S data sheet: 864 GB/s (48 GB GDDR6)
    "NVIDIA L4": 300.0,  # NVIDIA L4 Tensor Core GPU data sheet: 300 GB/s (24 GB GDDR6)
    "NVIDIA GeForce RTX 4090": 1_008.0,  # GeForce RTX 4090 specifications: 21 Gbps GDDR6X on 384 bits
}


def specified_bandwidth_gbps(gpu_name: str) -> float | None:
    """The data-sheet memory bandwidth of the card torch calls gpu_name (e.g. 'NVIDIA H100 80GB HBM3'); None for a
    card not in the table, and for an empty name (the CPU)."""
    by_name = {name.casefold(): gbps for name, gbps in SPECIFIED_BANDWIDTH_GBPS.items()}
    return by_name.get(gpu_name.strip().casefold())


def mbu(decode_gbps: float, gpu_name: str) -> float | None:
    """Model bandwidth utilization: bytes a decode step reads per second over the card's specified bandwidth;
    None where the card's specification is not in the table (or there is no card)."""
    specified = specified_bandwidth_gbps(gpu_name)
    return decode_gbps / specified if specified else None
