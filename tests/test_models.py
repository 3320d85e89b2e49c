"""Model sources: names in rows, configs without weights, clear errors for models that cannot load, weight ids
that change with the weights, random weights drawn by name (so a layer drawn alone, as a rank, a GPU of a device map
or a layer streamed into a packer draws it, equals the whole model's), and bytes as stored (tied tensors once)
against the arithmetic from the config."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bench_kernels.architecture import kv_bytes_per_token
from bench_kernels.models import (ModelError, eos_token_ids, estimated_memory_bytes, load_model, model_display_name,
                                  resolve_model_config, tensor_bytes, weight_bytes)

TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)


def test_rows_name_the_model_briefly() -> None:
    assert model_display_name("embedded") == "smollm2-135m-instruct"
    assert model_display_name("local:/models/llama-3.1-8b") == "llama-3.1-8b"
    assert model_display_name("preset:llama3.1-8b") == "llama3.1-8b"
    assert model_display_name("hub:meta-llama/Llama-3.1-8B") == "meta-llama/Llama-3.1-8B"


def test_a_preset_config_resolves_without_weights() -> None:
    config = resolve_model_config("preset:smollm2-135m")
    assert (config.model_type, config.hidden_size, config.num_hidden_layers) == ("llama", 576, 30)


def test_the_embedded_config_and_tokenizer_are_read_from_the_gguf_once(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Before any run has converted the weights (a fresh cache), validation's config and tokenizer come from the
    GGUF once, then from the cache: parsing the GGUF takes seconds each time."""
    from bench_kernels.models import embedded_cache_dir, resolve_tokenizer

    monkeypatch.setenv("BENCH_KERNELS_CACHE", str(tmp_path))
    first = resolve_model_config("embedded")
    kept = tmp_path / "models" / f"{embedded_cache_dir().name}-metadata"
    assert (kept / "config.json").is_file() and not (embedded_cache_dir() / "model.safetensors").exists()
    assert (first.model_type, first.hidden_size, first.num_hidden_layers) == ("llama", 576, 30)
    (kept / "config.json").write_text((kept / "config.json").read_text().replace('"num_hidden_layers": 30',
                                                                                 '"num_hidden_layers": 29'))
    assert resolve_model_config("embedded").num_hidden_layers == 29  # read from the cache, not the GGUF again
    assert resolve_tokenizer("embedded")("The capital of France").input_ids == [504, 3575, 282, 4649]


def test_models_that_cannot_load_say_why_and_what_is_allowed(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"unknown model 'gguf:x'.*'embedded', 'preset:<name>', 'local:<folder>'"):
        resolve_model_config("gguf:x")
    with pytest.raises(ModelError, match=r"unknown preset 'nope'; allowed presets: .*smollm2-135m"):
        resolve_model_config("preset:nope")
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model_config(f"local:{tmp_path / 'missing'}")
    with pytest.raises(ModelError, match="has no config.json"):
        resolve_model_config(f"local:{tmp_path}")


def test_a_local_model_s_weights_id_changes_with_its_weights(tiny_local_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_local_model, folder)
    first = load_model(f"local:{folder}", "fp32", "cpu")
    assert first.weights == "real" and first.name == "model" and first.source == f"local:{folder}"
    assert not first.hf_model.training and first.hf_model.dtype == torch.float32
    assert load_model(f"local:{folder}", "bf16", "cpu").weights_id == first.weights_id  # same files, same id
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # rewritten: a new modification time
    assert load_model(f"local:{folder}", "fp32", "cpu").weights_id != first.weights_id


def test_random_weights_drawn_module_by_module_equal_the_whole_model():
    whole = load_model("preset:smollm2-135m", "fp32", "cpu", seed=3)
    streamed = load_model("preset:smollm2-135m", "fp32", "cpu", seed=3, placement="streamed")
    assert streamed.hf_model.model.layers[5].mlp.up_proj.weight.is_meta
    for name in ("model.layers.5", "model.embed_tokens", "model.norm"):
        streamed.materialize(name, "cpu")
    for name, param in streamed.hf_model.named_parameters():
        if not param.is_meta:
            torch.testing.assert_close(param, whole.hf_model.get_parameter(name), rtol=0, atol=0)
    other_seed = load_model("preset:smollm2-135m", "fp32", "cpu", seed=4)
    assert not torch.equal(other_seed.hf_model.model.layers[5].mlp.up_proj.weight,
                           whole.hf_model.model.layers[5].mlp.up_proj.weight)
    assert whole.hf_model.lm_head.weight is whole.hf_model.model.embed_tokens.weight  # tied, as configured


def test_tied_and_shared_tensors_are_counted_once() -> None:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TINY, tie_word_embeddings=True))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    unique = {p.data_ptr(): p.numel() * p.element_size() for p in model.parameters()}
    assert weight_bytes(model) == sum(unique.values())
    weight = torch.zeros(8, 4, dtype=torch.bfloat16)
    assert tensor_bytes([weight, weight]) == 8 * 4 * 2


@pytest.mark.parametrize("tied", [False, True])
def test_estimated_memory_is_the_loaded_weights_plus_a_full_kv_cache(tied: bool) -> None:
    config = LlamaConfig(**TINY, tie_word_embeddings=tied)
    model = LlamaForCausalLM(config)
    batch_size, total_len = 3, 40
    kv = kv_bytes_per_token(config, 4) * batch_size * total_len
    assert kv == 2 * 2 * 2 * 16 * 4 * batch_size * total_len  # keys and values, 2 layers, 2 KV heads of 16, fp32
    assert estimated_memory_bytes(config, "fp32", batch_size, total_len) == weight_bytes(model) + kv
    assert estimated_memory_bytes(config, "bf16", batch_size, total_len) == (weight_bytes(model) + kv) // 2
    assert estimated_memory_bytes(config, "int4", batch_size, total_len) < estimated_memory_bytes(
        config, "fp8", batch_size, total_len) < estimated_memory_bytes(config, "bf16", batch_size, total_len)


def test_eos_ids_are_a_list_whatever_the_config_holds(tiny_local_model: Path) -> None:
    loaded = load_model(f"local:{tiny_local_model}", "fp32", "cpu", placement="none")
    for eos, expected in ((2, [2]), ([2, 7], [2, 7]), (None, [])):
        loaded.hf_model.generation_config.eos_token_id = eos
        assert eos_token_ids(loaded) == expected
