"""Shared fixtures: tests run from the project root with a cache of their own; a tiny random-weight model as a
local HF folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.cache import use_test_cache

ROOT = Path(__file__).resolve().parents[1]
use_test_cache()  # before any test (or subprocess it starts) converts, exports or builds anything


@pytest.fixture(autouse=True)
def _run_from_project_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative paths (params/, reports/) resolve against the project root, as in real use."""
    monkeypatch.chdir(ROOT)


@pytest.fixture(scope="session")
def tiny_local_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama with random weights saved as a local Hugging Face folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from bench_kernels.models import packaged_tokenizer

    folder = tmp_path_factory.mktemp("tiny-llama")
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    packaged_tokenizer().save_pretrained(folder)
    return folder
