"""--activation_checkpointing=True: the same losses and gradients, with our kernels and under compile, for less memory."""
import json

import torch

from gpt.build import build_run
from gpt.config import KernelConfig, ModelConfig, load_config
from gpt.model import GPT
from gpt.trainer import Trainer
from tests.conftest import tiny_argv

TRITON_OPS = dict(attention="triton", layernorm="triton", cross_entropy="triton")


def losses(out_dir, kind="train", key="loss"):
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [r[key] for r in map(json.loads, lines) if r["kind"] == kind]


def test_a_run_gives_the_same_losses_with_and_without_it(tiny_data, tmp_path):
    for on in (False, True):  # dropout 0.1 and accumulation: the recomputed forward must replay the same masks
        run = build_run(load_config(tiny_argv(tiny_data, tmp_path / str(on), activation_checkpointing=on,
                                              gradient_accumulation_steps=2, max_iters=4, eval_interval=4)))
        assert run.model.activation_checkpointing is on
        Trainer(run).run()
    assert losses(tmp_path / "True") == losses(tmp_path / "False")
    assert losses(tmp_path / "True", "eval", "val_loss") == losses(tmp_path / "False", "eval", "val_loss")


def step(checkpointing: bool, compile: bool = False, **ops) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Loss and gradients of one training forward/backward, dropout on, from seeded weights and data."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(block_size=16, vocab_size=37, n_layer=2, n_head=2, n_embd=32, bias=True), dropout=0.1,
                kernels=KernelConfig(**ops), activation_checkpointing=checkpointing)
    idx = torch.randint(0, 37, (2, 15), generator=torch.Generator().manual_seed(1))
    forward = model
    if compile:
        torch._dynamo.reset()
        forward = torch.compile(model, backend="aot_eager", fullgraph=True)  # fullgraph: a graph break is an error
    torch.manual_seed(2)  # the dropout masks
    _, loss = forward(idx, torch.roll(idx, -1, 1))
    loss.backward()
    return loss.detach(), [p.grad for p in model.parameters()]


def test_our_triton_kernels_give_the_same_loss_and_gradients():
    ref_loss, ref_grads = step(False, **TRITON_OPS)  # in-kernel attention dropout, seeded from torch's generator
    loss, grads = step(True, **TRITON_OPS)
    assert torch.equal(loss, ref_loss)
    assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads))


def test_it_compiles_as_one_graph_with_the_eager_gradients():
    ref_loss, ref_grads = step(False)
    loss, grads = step(True, compile=True)
    torch.testing.assert_close(loss, ref_loss)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


def saved_bytes(checkpointing: bool) -> int:
    """Bytes autograd keeps for the backward during one forward (the activations checkpointing drops)."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(block_size=64, vocab_size=50, n_layer=4, n_head=2, n_embd=64), activation_checkpointing=checkpointing)
    idx = torch.randint(0, 50, (4, 64))
    total = 0

    def pack(t):
        nonlocal total
        if not isinstance(t, torch.nn.Parameter):
            total += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(idx, idx)
    return total


def test_it_keeps_only_each_blocks_input_for_the_backward():
    full, kept = saved_bytes(False), saved_bytes(True)
    block_inputs = 4 * 64 * 64 * 4 * 4  # (B, T, C) fp32 for each of the 4 blocks
    assert kept < full / 3 and kept - block_inputs < full / 4
    print(f"saved for backward, 4 blocks of (4, 64, 64): {full / 2**20:.2f} MiB without, {kept / 2**20:.2f} MiB with")
