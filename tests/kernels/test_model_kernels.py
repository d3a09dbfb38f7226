"""The GPT on our kernels: trains like the torch reference, and compiles without graph breaks."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kernels
from gpt.build import build_run
from gpt.config import KernelConfig, ModelConfig, load_config
from gpt.errors import GPTError
from gpt.model import GPT
from gpt.trainer import Trainer
from tests.conftest import run_script, tiny_argv

TRITON_OPS = dict(attention="triton", layernorm="triton", cross_entropy="triton")
TORCH_OPS = dict(attention="math", layernorm="torch", cross_entropy="torch")


def train_losses(steps: int = 3, dropout: float = 0.0, **ops) -> list[float]:
    torch.manual_seed(0)
    model = GPT(ModelConfig(block_size=16, vocab_size=37, n_layer=1, n_head=2, n_embd=48, bias=True),
                dropout=dropout, kernels=KernelConfig(**ops))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    idx = torch.randint(0, 37, (2, 15), generator=torch.Generator().manual_seed(1))  # T=15: ragged tiles
    losses = []
    for _ in range(steps):  # one batch again and again: the loss must fall
        _, loss = model(idx, torch.roll(idx, -1, 1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_a_tiny_gpt_on_triton_trains_like_the_reference():
    ours, ref = train_losses(**TRITON_OPS), train_losses(**TORCH_OPS)
    assert ours[-1] < ours[0]
    assert ours == pytest.approx(ref, rel=1e-4, abs=1e-5)


def test_the_fused_linear_loss_trains_like_the_reference():
    ours = train_losses(fused_linear_loss=True, **TRITON_OPS)
    assert ours == pytest.approx(train_losses(**TORCH_OPS), rel=1e-4, abs=1e-5)


def test_training_with_attention_dropout_in_the_kernel_learns():
    losses = train_losses(steps=4, dropout=0.2, **TRITON_OPS)
    assert all(map(torch.isfinite, map(torch.tensor, losses))) and losses[-1] < losses[0]


def test_the_ops_compile_as_one_graph():
    def step(q, x, w, b, logits, targets):
        a = kernels.attention(q, q, q, impl="triton")
        y = kernels.layer_norm(x, w, b, impl="triton")
        return a.sum() + y.sum() + kernels.cross_entropy(logits, targets, impl="triton")

    torch.manual_seed(0)
    args = [torch.randn(1, 2, 9, 16, requires_grad=True), torch.randn(5, 24, requires_grad=True),
            torch.randn(24, requires_grad=True), torch.randn(24, requires_grad=True),
            torch.randn(6, 30, requires_grad=True), torch.randint(0, 30, (6,))]
    eager = step(*args)
    eager_grads = torch.autograd.grad(eager, args[:5])
    torch._dynamo.reset()
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)  # fullgraph: a graph break is an error
    out = compiled(*args)
    torch.testing.assert_close(out, eager)
    for got, want in zip(torch.autograd.grad(out, args[:5]), eager_grads):
        torch.testing.assert_close(got, want)


def test_the_reference_ops_give_the_loss_the_model_always_computed():
    torch.manual_seed(0)
    model = GPT(ModelConfig(block_size=8, vocab_size=11, n_layer=1, n_head=1, n_embd=16), kernels=KernelConfig(**TORCH_OPS))
    idx = torch.randint(0, 11, (2, 8))
    logits, loss = model(idx, idx)
    torch.testing.assert_close(loss, F.cross_entropy(logits.view(-1, 11).float(), idx.view(-1)))


def test_the_gpt_on_triton_compiles_without_graph_breaks():
    torch.manual_seed(0)
    model = GPT(ModelConfig(block_size=16, vocab_size=37, n_layer=1, n_head=2, n_embd=32, bias=False),
                kernels=KernelConfig(fused_linear_loss=True, **TRITON_OPS))
    idx = torch.randint(0, 37, (2, 11))
    _, eager = model(idx, idx)
    torch._dynamo.reset()
    _, compiled = torch.compile(model, backend="aot_eager", fullgraph=True)(idx, idx)
    torch.testing.assert_close(compiled, eager)
    compiled.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_config_keys_choose_the_ops_and_reject_unknown_ones():
    cfg = load_config(["--attention=triton", "--layernorm=torch", "--cross_entropy=math", "--fused_linear_loss=True"])
    k = cfg.kernels
    assert (k.attention, k.layernorm, k.cross_entropy, k.fused_linear_loss) == ("triton", "torch", "math", True)
    with pytest.raises(GPTError, match="--layernorm='fast' is not one of auto, triton, torch, math"):
        load_config(["--layernorm=fast"])
    with pytest.raises(GPTError, match="--attention='sdpa' is not one of auto, triton, torch, math"):
        load_config(["--attention=sdpa"])  # SDPA is attention's `torch` implementation, like every op's


def test_a_checkpoint_trained_on_our_kernels_samples_on_cpu_without_the_interpreter(tiny_data, tmp_path):
    argv = tiny_argv(tiny_data, tmp_path, max_iters=2, eval_interval=2, eval_iters=1, n_layer=1,
                     attention="triton", layernorm="triton", cross_entropy="triton")
    run = build_run(load_config(argv))
    assert run.model.kernels == KernelConfig(**TRITON_OPS)
    Trainer(run).run()
    # the sampler in a process where our kernels cannot run (no GPU, no interpreter): torch's ops compute
    sample = run_script("launch/sample.py", f"--out_dir={tmp_path}", "--start=ROMEO:", "--num_samples=1",
                        "--max_new_tokens=20", f"--output_dir={tmp_path / 'samples'}", env={"TRITON_INTERPRET": None})
    assert sample.returncode == 0, sample.stderr
    assert (tmp_path / "samples" / "sample_001.txt").read_text().startswith("ROMEO:")
