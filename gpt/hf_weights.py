"""Our GPT's weights in Hugging Face's GPT-2 layout and back: the one name table import and export share.

transformers' GPT2LMHeadModel kept OpenAI's tensor names, as nanoGPT (and so our model) did:
`transformer.wte`, `.wpe`, `.h.N.ln_1`, `.attn.c_attn`, `.attn.c_proj`, `.ln_2`, `.mlp.c_fc`,
`.mlp.c_proj`, `.ln_f`. Three things differ:
- the four projections are Conv1D modules, whose weight is (in, out): the transpose of nn.Linear's;
- the output head is tied to wte and not stored (`tie_word_embeddings`);
- snapshots saved by older code (OpenAI's own on the Hub) have no `transformer.` prefix and store each
  attention's causal mask as `h.N.attn.bias` / `h.N.attn.masked_bias`: buffers, not weights.
GPT-2 always has biases; a model trained with bias=False exports zeros in their place, which
computes the same function.
"""
from __future__ import annotations

import re
from typing import Any, Optional

import torch

from gpt.config import ModelConfig
from gpt.errors import GPTError

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
BLOCK_TENSORS = ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                 "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                 "mlp.c_proj.weight", "mlp.c_proj.bias")
_MASK_BUFFER = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")
# our model computes GELU exactly (erf), as nanoGPT does; OpenAI's GPT-2 uses the tanh approximation
EXACT_GELU = "gelu"
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def non_gpt2_options(model: ModelConfig) -> list[str]:
    """The architecture options of `model` that GPT-2 does not have, as `key=value` (empty for nanoGPT's GPT).

    GPT2LMHeadModel computes learned positions, LayerNorm, a GELU MLP and a tied head, nothing else: weights
    trained with any other option would load into it without complaint and compute something else.
    """
    gpt2 = ModelConfig()
    keys = ("pos_emb", "norm", "qk_norm", "mlp", "tie_embeddings", "logit_softcap")
    return [f"{k}={getattr(model, k)}" for k in keys if getattr(model, k) != getattr(gpt2, k)]


def require_gpt2_architecture(model: ModelConfig, action: str) -> None:
    """A GPTError when `model` has an architecture option GPT-2 lacks; `action` says what was asked."""
    differ = non_gpt2_options(model)
    if differ:
        raise GPTError(f"cannot {action}: the model has {', '.join(differ)}, which Hugging Face's GPT-2 "
                       "(GPT2LMHeadModel) does not compute, so its weights would mean something else there. "
                       "Use the default architecture (learned positions, layernorm, gelu, tied embeddings, no "
                       "qk_norm or logit soft-cap) for weights that go to or come from GPT-2, or keep this "
                       "model in our own checkpoint format.")


def hf_names(n_layer: int) -> list[str]:
    """Every weight a GPT-2 snapshot must hold, without the `transformer.` prefix."""
    return (["wte.weight", "wpe.weight"] + [f"h.{i}.{t}" for i in range(n_layer) for t in BLOCK_TENSORS]
            + ["ln_f.weight", "ln_f.bias"])


def shape_from_hf_config(hf: dict[str, Any], source: str) -> tuple[dict[str, int], list[str]]:
    """The model's shape from a GPT-2 config.json, and notes for the user; a GPTError for what our GPT cannot compute."""
    if hf.get("model_type") != "gpt2":
        raise GPTError(f"{source} holds a {hf.get('model_type')!r} model; --init_from reads GPT-2 snapshots "
                       "(model_type 'gpt2').")
    shape = {"n_layer": hf["n_layer"], "n_head": hf["n_head"], "n_embd": hf["n_embd"],
             "n_positions": hf.get("n_positions", hf.get("n_ctx")), "vocab_size": hf["vocab_size"]}
    unsupported = []
    if hf.get("n_inner") not in (None, 4 * shape["n_embd"]):
        unsupported.append(f"n_inner={hf['n_inner']} (our MLP is 4 x n_embd wide)")
    if abs(float(hf.get("layer_norm_epsilon", 1e-5)) - 1e-5) > 1e-12:
        unsupported.append(f"layer_norm_epsilon={hf['layer_norm_epsilon']} (ours is 1e-5)")
    for key, ours in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                      ("add_cross_attention", False), ("tie_word_embeddings", True)):
        if bool(hf.get(key, ours)) != ours:
            unsupported.append(f"{key}={hf[key]}")
    activation = hf.get("activation_function", "gelu_new")
    if activation not in (EXACT_GELU, *TANH_GELUS):
        unsupported.append(f"activation_function={activation!r}")
    if unsupported:
        raise GPTError(f"{source} is a GPT-2 variant this GPT does not compute: {'; '.join(unsupported)}.")
    notes = []
    if activation in TANH_GELUS:
        notes.append(f"{source} was trained with GELU's tanh approximation ({activation}); this GPT computes GELU "
                     "exactly, as nanoGPT does: the activations differ by at most 4.7e-4 each, so logits differ "
                     "slightly from the original's")
    return shape, notes


def hf_config(model: ModelConfig, vocab_size: int, eot: Optional[int]) -> dict[str, Any]:
    """config.json for a GPT2LMHeadModel that computes what our `model` computes (exact GELU, no dropout)."""
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": vocab_size, "n_positions": model.block_size, "n_embd": model.n_embd,
        "n_layer": model.n_layer, "n_head": model.n_head, "n_inner": None,
        "activation_function": EXACT_GELU, "layer_norm_epsilon": 1e-5, "initializer_range": 0.02,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True, "use_cache": True, "bos_token_id": eot, "eos_token_id": eot, "dtype": "float32",
    }


def from_hf(state: dict[str, torch.Tensor], n_layer: int, source: str) -> dict[str, torch.Tensor]:
    """A GPT-2 snapshot's tensors under our names, in fp32, Conv1D weights transposed, the head tied to wte."""
    plain: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        name = key.removeprefix("transformer.")
        if _MASK_BUFFER.match(name):
            continue
        plain[name] = tensor
    head = plain.pop("lm_head.weight", None)
    expected = hf_names(n_layer)
    missing = [k for k in expected if k not in plain]
    extra = sorted(set(plain) - set(expected))
    if missing or extra:
        raise GPTError(f"{source} does not hold a {n_layer}-layer GPT-2's weights: "
                       + "; ".join(p for p in (f"missing {missing[:4]}" if missing else "",
                                               f"unexpected {extra[:4]}" if extra else "") if p)
                       + ". Its config.json and weights disagree, or it is not a GPT2LMHeadModel snapshot.")
    if head is not None and not torch.equal(head, plain["wte.weight"]):
        raise GPTError(f"{source} has an output head (lm_head) of its own, not tied to the token embedding; "
                       "this GPT ties them, so it cannot take these weights.")
    ours = {}
    for name in expected:
        t = plain[name].to(torch.float32)
        ours[f"transformer.{name}"] = t.t().contiguous() if name.endswith(CONV1D) else t.contiguous()
    ours["lm_head.weight"] = ours["transformer.wte.weight"]
    return ours


def to_hf(state: dict[str, torch.Tensor], model: ModelConfig, vocab_size: int) -> dict[str, torch.Tensor]:
    """Our weights as a GPT2LMHeadModel's state (lm_head left to the tie), vocabulary cut to `vocab_size` ids.

    Rows past `vocab_size` are the padding a model gets for faster matmuls (50304 for 50257): no token
    has them, so they go, and the exported model's logits are ours over the tokenizer's ids.
    """
    out = {}
    for name in hf_names(model.n_layer):
        key = f"transformer.{name}"
        if key in state:
            t = state[key].detach().to("cpu", torch.float32)
        elif name.endswith(".bias"):  # a bias=False model: zero biases compute the same
            t = torch.zeros(state[key.removesuffix(".bias") + ".weight"].shape[0])  # ours: (out, in) and (C,)
        else:
            raise GPTError(f"the checkpoint lacks {key}: it is not a GPT checkpoint written by launch/train.py.")
        if name == "wte.weight":
            t = t[:vocab_size]
        out[key] = (t.t() if name.endswith(CONV1D) else t).contiguous()
    return out
