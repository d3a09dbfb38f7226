"""Where `auto` runs our kernels on a GPU: capability, dtype, size and shared memory in, implementation out."""
from __future__ import annotations

import importlib

import pytest
import torch

import kernels
from gpt.errors import GPTError
from kernels import gpu_support
from kernels.gpu_support import KIB, decide

fa = importlib.import_module("kernels.flash_attention")
ln = importlib.import_module("kernels.layernorm")
ce = importlib.import_module("kernels.cross_entropy")
H100, A100, L4 = (9, 0), (8, 0), (8, 9)
SHARED = {t.capability: t.max_shared for t in gpu_support.CHECKED_TARGETS}


@pytest.mark.parametrize("op, size", [("attention", 64), ("layernorm", 768), ("cross_entropy", 50304),
                                      ("linear_cross_entropy", 65), ("rmsnorm", 768), ("rmsnorm", 64), ("rope", 64)])
@pytest.mark.parametrize("capability", [A100, L4, H100])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_checked_gpus_run_our_kernels_with_the_launchers_tiles(op, size, capability, dtype):
    d = decide(op, capability, dtype, size, SHARED[capability])
    assert d.use_triton, d.line()
    assert d.tiles == gpu_support.gpu_tiles(op, dtype, size, SHARED[capability])
    assert d.tiles.shared_kib * KIB <= SHARED[capability]


def test_the_launchers_and_the_decision_pick_the_same_tiles():
    assert decide("attention", H100, torch.bfloat16, 64, SHARED[H100]).tiles == \
        fa.gpu_tiles(64, torch.bfloat16, SHARED[H100])
    assert decide("layernorm", A100, torch.float32, 1600, SHARED[A100]).tiles == ln.gpu_tiles(1600)
    assert decide("cross_entropy", L4, torch.float16, 65, SHARED[L4]).tiles == ce.gpu_tiles(65)


@pytest.mark.parametrize("capability, name", [((7, 5), "sm_75 (T4, RTX 20xx)"), ((8, 6), "sm_86 (RTX 30xx"),
                                              ((7, 0), "sm_70 (V100)"), ((10, 0), "sm_100 (B200)"),
                                              ((12, 1), "sm_121")])
def test_gpus_that_are_not_compile_checked_use_torch(capability, name):
    for op in gpu_support.OPS:
        d = decide(op, capability, torch.float16, 64, 96 * KIB)
        assert not d.use_triton and d.tiles is None
        assert d.line().startswith(f"{op}: torch ({name}")
        assert "is not compile-checked; checked: sm_80, sm_89, sm_90" in d.reason


def test_bf16_needs_sm80_and_other_dtypes_are_not_kernel_dtypes():
    d = decide("layernorm", (7, 5), torch.bfloat16, 768, 64 * KIB)
    assert not d.use_triton and d.reason == "bf16 needs sm_80 or newer; this GPU is sm_75 (T4, RTX 20xx)"
    assert not decide("layernorm", H100, torch.float64, 768, SHARED[H100]).use_triton


def test_fp32_attention_uses_sdpa_but_fp32_layernorm_and_loss_use_our_kernels():
    assert "SDPA" in decide("attention", H100, torch.float32, 64, SHARED[H100]).reason
    assert decide("layernorm", H100, torch.float32, 768, SHARED[H100]).use_triton
    assert decide("cross_entropy", H100, torch.float32, 50304, SHARED[H100]).use_triton


@pytest.mark.parametrize("head_dim, ours", [(8, False), (15, False), (16, True), (24, True), (40, True),
                                            (80, True), (96, True), (128, True), (129, False), (256, False)])
def test_head_dims_outside_the_checked_range_use_torch(head_dim, ours):
    assert decide("attention", A100, torch.bfloat16, head_dim, SHARED[A100]).use_triton is ours


def test_every_allowed_head_dim_lies_in_a_bucket_the_check_compiles_twice():
    # a head dim compiles as its power-of-two bucket (BLOCK_D) with a mask; the check compiles each bucket
    # at its power of two and at a head dim that needs the mask
    lo, hi = gpu_support.ATTENTION_HEAD_DIMS
    checked = gpu_support.ATTENTION_CHECKED_HEAD_DIMS
    for d in range(lo, hi + 1):
        same_bucket = [c for c in checked if fa.block_d(c) == fa.block_d(d)]
        assert fa.block_d(d) in same_bucket, d
        assert any(c != fa.block_d(c) for c in same_bucket) or fa.block_d(d) == lo, d


def test_layernorm_rows_too_wide_to_run_without_spilling_use_torch():
    assert decide("layernorm", H100, torch.bfloat16, ln.GPU_AUTO_MAX_N, SHARED[H100]).use_triton
    d = decide("layernorm", H100, torch.bfloat16, ln.GPU_AUTO_MAX_N + 1, SHARED[H100])
    assert not d.use_triton and d.reason == "rows of 8193: the kernel spills registers above 8192"


def test_rmsnorm_takes_layernorms_row_tiles_and_rope_only_the_compiled_head_dims():
    assert decide("rmsnorm", A100, torch.bfloat16, 1600, SHARED[A100]).tiles == ln.gpu_tiles(1600)
    d = decide("rmsnorm", H100, torch.bfloat16, ln.GPU_AUTO_MAX_N + 1, SHARED[H100])
    assert not d.use_triton and d.reason == "rows of 8193: the kernel spills registers above 8192"
    for head_dim in range(2, 260, 2):  # half the head dim is a constexpr: only compiled ones run our kernel
        assert decide("rope", H100, torch.bfloat16, head_dim, SHARED[H100]).use_triton is (
            head_dim in gpu_support.ROPE_HEAD_DIMS), head_dim
    assert decide("rope", H100, torch.bfloat16, 80, SHARED[H100]).reason.startswith(
        "head dim 80: the kernel is compile-checked for head dims 16, 24, 32, 48, 64, 96, 128")


def test_tiles_follow_the_devices_shared_memory(monkeypatch):
    # as on an sm_89 card (99 KiB): the big tile does not fit and the smaller one does; below both, torch
    big = fa.AttentionTiles(128, 128, 128, 64, warps=8, stages=3, shared_kib=160)
    small = fa.AttentionTiles(64, 64, 64, 32, warps=4, stages=2, shared_kib=48)
    monkeypatch.setitem(fa.GPU_TILES, (64, 2), (big, small))
    decide.cache_clear()
    try:
        assert decide("attention", H100, torch.bfloat16, 64, SHARED[H100]).tiles == big
        assert decide("attention", L4, torch.bfloat16, 64, SHARED[L4]).tiles == small
        d = decide("attention", L4, torch.bfloat16, 64, 40 * KIB)
        assert not d.use_triton and d.reason == "sm_89, bf16, head dim 64: no tiles fit 40 KiB of shared memory"
    finally:
        decide.cache_clear()


def test_a_small_shared_memory_sends_every_op_to_torch():
    for op, size in (("attention", 128), ("layernorm", 768), ("cross_entropy", 50304)):
        assert not decide(op, H100, torch.bfloat16, size, KIB // 2).use_triton


def test_the_log_line_names_the_implementation_and_why():
    line = decide("attention", H100, torch.bfloat16, 64, SHARED[H100]).line()
    tiles = fa.gpu_tiles(64, torch.bfloat16, SHARED[H100])
    assert line == (f"attention: triton (sm_90, bf16, head dim 64: {tiles.label()}, "
                    f"{tiles.shared_kib} KiB of 227 KiB)")
    assert decide("layernorm", (7, 5), torch.float16, 768, 64 * KIB).line() == \
        "layernorm: torch (sm_75 (T4, RTX 20xx) is not compile-checked; checked: sm_80, sm_89, sm_90)"


def test_decide_for_takes_the_tensors_device_and_dtype_and_repeats_are_cached(monkeypatch):
    monkeypatch.setattr(gpu_support, "device_capability", lambda device: L4)
    monkeypatch.setattr(gpu_support, "max_shared_memory", lambda device: SHARED[L4])
    x = torch.empty(2, 768, dtype=torch.bfloat16)
    assert gpu_support.decide_for("layernorm", x, 768) == decide("layernorm", L4, torch.bfloat16, 768, SHARED[L4])
    hits = decide.cache_info().hits
    gpu_support.decide_for("layernorm", x, 768)
    assert decide.cache_info().hits == hits + 1


def test_a_devices_capability_and_shared_memory_are_read_once(monkeypatch):
    reads = []

    class Props:  # what torch reports for an H100
        major, minor, shared_memory_per_block, shared_memory_per_block_optin = 9, 0, 48 * KIB, 227 * KIB

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: reads.append(index) or Props)
    runtime = importlib.import_module("kernels.runtime")
    runtime._device_limits.cache_clear()
    try:
        assert runtime.device_capability(0) == H100 and runtime.max_shared_memory("cuda:0") == 227 * KIB
        assert runtime.max_shared_memory(torch.device("cuda", 0)) == 227 * KIB and reads == [0]
    finally:
        runtime._device_limits.cache_clear()


def test_an_unknown_op_is_an_error():
    with pytest.raises(GPTError, match="op='softmax' is not one of attention, layernorm"):
        decide("softmax", H100, torch.bfloat16, 64, SHARED[H100])


def test_a_runs_first_lines_name_each_ops_implementation_and_why(monkeypatch):
    asked = {"attention": "auto", "layernorm": "auto", "cross_entropy": "torch"}
    sizes = {"attention": 64, "layernorm": 768, "cross_entropy": 50304}
    lines = kernels.describe_ops(torch.device("cpu"), torch.float32, asked, sizes)
    assert lines == ["attention: torch (auto: our kernels run on CUDA GPUs; this is cpu)",
                     "layernorm: torch (auto: our kernels run on CUDA GPUs; this is cpu)",
                     "cross_entropy: torch (asked)"]
    # a pretend T4 and a pretend H100, outside the interpreter: the decision's own lines
    monkeypatch.setattr(kernels, "INTERPRETER", False)
    for capability, shared in (((7, 5), 64 * KIB), (H100, SHARED[H100])):
        monkeypatch.setattr(gpu_support, "device_capability", lambda device, c=capability: c)
        monkeypatch.setattr(gpu_support, "max_shared_memory", lambda device, s=shared: s)
        lines = kernels.describe_ops(torch.device("cuda"), torch.float16, asked, sizes)
        want = [decide(op, capability, torch.float16, sizes[op], shared).line() for op in ("attention", "layernorm")]
        assert lines == want + ["cross_entropy: torch (asked)"]
    assert lines[0].startswith("attention: triton (sm_90, fp16, head dim 64")
