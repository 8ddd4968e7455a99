"""Write a Hugging Face Llama + byte-level BPE tokenizer as an unquantized GGUF file, the way llama.cpp lays one out.

Only for tests: it lets the suite check the GGUF model source on a tiny model it builds itself in a second, instead
of the 98 MB SmolLM2 file. Tensors stay F32, so the dequantized weights must equal the originals exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CONTROL, NORMAL = 3, 1  # llama.cpp token types


def write_llama_gguf(model, tokenizer, path: Path) -> Path:
    """`model`: a LlamaModel or LlamaForCausalLM; `tokenizer`: a fast byte-level BPE tokenizer (the tiny preset's)."""
    import gguf

    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    _add_tokenizer(writer, tokenizer)

    state = {k.removeprefix("model."): v.detach().float().numpy() for k, v in model.state_dict().items()}
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    writer.add_tensor("token_embd.weight", state["embed_tokens.weight"])
    for i in range(cfg.num_hidden_layers):
        layer = f"layers.{i}."
        names = {"attn_norm": "input_layernorm", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
                 "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                 "ffn_down": "mlp.down_proj"}
        for gguf_name, hf_name in names.items():
            writer.add_tensor(f"blk.{i}.{gguf_name}.weight", state[f"{layer}{hf_name}.weight"])
        writer.add_tensor(f"blk.{i}.attn_q.weight", _rotary_interleave(state[f"{layer}self_attn.q_proj.weight"], heads))
        writer.add_tensor(f"blk.{i}.attn_k.weight",
                          _rotary_interleave(state[f"{layer}self_attn.k_proj.weight"], kv_heads))
    writer.add_tensor("output_norm.weight", state["norm.weight"])  # no output.weight: tied to the embeddings
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _rotary_interleave(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp stores q/k rows with each head's two rotary halves interleaved; readers undo this."""
    half = weight.shape[0] // heads // 2
    return np.ascontiguousarray(weight.reshape(heads, 2, half, -1).swapaxes(1, 2).reshape(weight.shape))


def _add_tokenizer(writer, tokenizer) -> None:
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    special = set(tokenizer.all_special_tokens)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([CONTROL if t in special else NORMAL for t in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)
