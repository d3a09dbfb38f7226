"""The GPU compile check: our kernels compile for sm_80 and sm_90 (CI's subset), and a broken one fails it.

The compiles run in a subprocess without TRITON_INTERPRET (under it @triton.jit builds interpreter
functions, which triton cannot compile); they land in triton's cache, so a rerun takes seconds.
"""
from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt.errors import GPTError
from kernels import gpu_compile, gpu_matrix, gpu_support
from kernels.gpu_compile import Result
from kernels.gpu_support import KIB

REPO = Path(__file__).resolve().parents[2]
fa = importlib.import_module("kernels.flash_attention")
ln = importlib.import_module("kernels.layernorm")
ce = importlib.import_module("kernels.cross_entropy")
rms = importlib.import_module("kernels.rmsnorm")
rope = importlib.import_module("kernels.rope")
TARGETS = {t.name: t for t in gpu_support.CHECKED_TARGETS}
KERNELS = ("flash forward", "flash delta", "flash backward", "dropout mask", "layernorm forward",
           "layernorm backward", "cross-entropy", "rmsnorm forward", "rmsnorm backward", "rope")


def run_check(*args: str, cwd: Path = REPO, pythonpath: str = "") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-m", "kernels.gpu_compile", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def rows(output: str) -> list[list[str]]:
    """The cells of the per-compile table (the first one printed; the per-kernel summary follows it)."""
    table = output.split("\n\n")[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]


def test_ci_subset_compiles_one_configuration_of_every_kernel_for_sm80_and_sm90():
    done = run_check("--subset", "--jobs=2")
    assert done.returncode == 0, done.stdout + done.stderr
    found = {(r[0], r[3]) for r in rows(done.stdout)}
    assert found == {(k, t) for k in KERNELS for t in ("sm_80", "sm_90")}
    assert all(r[-1].startswith("ok") for r in rows(done.stdout))


def test_a_kernel_that_cannot_compile_for_a_gpu_fails_the_check(tmp_path):
    # The interpreter runs a tl.dot on an 8-wide tile; a GPU compile needs 16 (mma's smallest K and N).
    # Break the backward's tiles that way in a copy of kernels/ and run the CI subset against the copy.
    shutil.copytree(REPO / "kernels", tmp_path / "kernels", ignore=shutil.ignore_patterns("__pycache__"))
    source = tmp_path / "kernels" / "flash_attention.py"
    text = source.read_text()
    good = "_HALF_UP_TO_64 = AttentionTiles(128, 64, 128, 32,"
    assert good in text
    source.write_text(text.replace(good, "_HALF_UP_TO_64 = AttentionTiles(128, 64, 128, 8,"))
    done = run_check("--subset", "--targets=sm_90", "--jobs=2", cwd=tmp_path,
                     pythonpath=f"{tmp_path}{os.pathsep}{REPO}")
    assert done.returncode == 1, done.stdout + done.stderr
    failed = [r for r in rows(done.stdout) if r[-1].startswith("FAIL")]
    assert [r[0] for r in failed] == ["flash backward"] and "compile error" in failed[0][-1]
    assert "BLOCK_SMALL=8" in failed[0][1] and "1 of 10 compiles FAILED" in done.stderr


def compiled(jobs: list, kernel: str, **want) -> bool:
    """Whether a job of `kernel` has these constexprs and options (num_warps, num_stages)."""
    return any(j.kernel == kernel and want.items() <= (dict(j.constexprs) | dict(j.options)).items() for j in jobs)


def test_the_matrix_compiles_every_tile_of_every_launchers_gpu_table():
    jobs = gpu_matrix.unique_jobs(gpu_matrix.full_matrix(gpu_support.CHECKED_TARGETS))
    for target in gpu_support.CHECKED_TARGETS:
        mine = [j for j in jobs if j.target == target]
        for (bd, _), tiles in fa.GPU_TILES.items():
            for t in tiles:
                if t.shared_kib * KIB <= target.max_shared:
                    assert compiled(mine, "_fwd_kernel", BLOCK_D=bd, BLOCK_M=t.block_m, BLOCK_N=t.block_n,
                                    num_warps=t.warps, num_stages=t.stages), (target.name, t)
                    assert compiled(mine, "_bwd_kernel", BLOCK_D=bd, BLOCK_BIG=t.block_big,
                                    BLOCK_SMALL=t.block_small, num_warps=t.backward_warps,
                                    num_stages=t.backward_stages), (target.name, t)
        for t in ln.gpu_tile_table():
            for bias in (True, False):
                assert compiled(mine, "_ln_fwd_kernel", HAS_BIAS=bias, BLOCK_M=t.block_m, BLOCK_N=t.block_n,
                                num_warps=t.warps), (target.name, t)
            assert compiled(mine, "_ln_bwd_kernel", BLOCK_M=t.block_m, BLOCK_N=t.block_n, num_warps=t.warps)
        for t in ce.GPU_TILES:
            assert compiled(mine, "_ce_kernel", BLOCK_M=t.block_m, BLOCK_V=t.block_v, num_warps=t.warps)
        for t in rms.gpu_tile_table():
            for kernel in ("_rms_fwd_kernel", "_rms_bwd_kernel"):
                assert compiled(mine, kernel, BLOCK_M=t.block_m, BLOCK_N=t.block_n, num_warps=t.warps), (kernel, t)
        for d in gpu_support.ROPE_HEAD_DIMS:  # one compile per head dim: half of it is a constexpr
            t = rope.gpu_tiles(d)
            assert compiled(mine, "_rope_kernel", HALF=d // 2, BLOCK_R=t.block_r, BLOCK_H=t.block_h, num_warps=t.warps)


def test_the_matrix_spans_head_dims_dtypes_causal_dropout_and_the_subset_one_config_per_kernel():
    cases = gpu_matrix.full_matrix((TARGETS["sm_89"],))
    fwd = {dict(j.constexprs)["HEAD_DIM"]: j for j in gpu_matrix.unique_jobs(cases) if j.kernel == "_fwd_kernel"}
    assert sorted(fwd) == [16, 24, 32, 48, 64, 96, 128]
    variants = {(dict(j.constexprs)["CAUSAL"], dict(j.constexprs)["DROPOUT"], j.signature[0][1])
                for j in gpu_matrix.unique_jobs(cases) if j.kernel == "_fwd_kernel"}
    assert variants == {(c, d, t) for c in (True, False) for d in (True, False) for t in ("*fp16", "*bf16")}
    subset = gpu_matrix.unique_jobs(gpu_matrix.subset(tuple(TARGETS[n] for n in gpu_matrix.SUBSET_TARGETS)))
    assert sorted((j.target.name, j.kernel) for j in subset) == sorted(
        (t, k) for t in ("sm_80", "sm_90") for k in ("_fwd_kernel", "_delta_kernel", "_bwd_kernel", "_mask_kernel",
                                                    "_ln_fwd_kernel", "_ln_bwd_kernel", "_ce_kernel",
                                                    "_rms_fwd_kernel", "_rms_bwd_kernel", "_rope_kernel"))


def test_a_job_is_specialised_as_triton_specialises_the_launch():
    q = torch.empty(2, 3, 64, 24, device="meta", dtype=torch.float16)
    with gpu_matrix.recording(fa) as log:
        fa.attention_forward(q, q, q, 0, True, 0.0, 0.2, fa.GPU_TILES[(32, 2)][0])
    kernel, args, kwargs = log[0]
    job = gpu_matrix.job_from_launch(kernel, args, kwargs, TARGETS["sm_80"], 64 * KIB, "test")
    sig = dict(job.signature)
    assert sig["Q"] == "*fp16" and sig["LSE"] == "*fp32" and sig["qk_scale"] == "fp32"
    assert sig["sqh"] == "i32" and sig["seed"] == "i32" and sig["HEAD_DIM"] == "constexpr"
    names = [n for n, _ in job.signature]
    # a row stride of 24 elements is not known to be 16-aligned; 64 * 24, T = 64 and the pointers are
    assert names.index("sqt") not in job.aligned
    assert {names.index(n) for n in ("Q", "sqb", "sqh", "T")} <= set(job.aligned)
    assert dict(job.options) == {"num_warps": 8, "num_stages": 3}
    assert fa._fwd_kernel is kernel or not isinstance(fa._fwd_kernel, gpu_matrix._Recorder)  # restored


# Runs without the interpreter: triton's own binder and argument packing, as a GPU launch would call them.
SAME_AS_JIT = """
import torch
import triton.runtime.jit as jit
from triton.backends.compiler import GPUTarget
from triton.compiler.compiler import make_backend
from kernels import gpu_matrix, gpu_support
backend = make_backend(GPUTarget("cuda", 90, 32))
h100 = gpu_support.CHECKED_TARGETS[-1]
cases = gpu_matrix.subset((h100,)) + [gpu_matrix.attention_case(h100, 24, torch.float16, False, True, t=1000),
                                      gpu_matrix.layernorm_case(h100, 1000, torch.float32, bias=False)]
for case in cases:
    with gpu_matrix.recording(case.module) as log:
        case.run()
    for kernel, args, kwargs in log:
        job = gpu_matrix.job_from_launch(kernel, args, kwargs, h100, 0, "")
        bound, specialization, options = jit.create_function_from_signature(kernel.signature, kernel.params,
                                                                            backend)(*args, **kwargs)
        options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
        assert dict(job.signature) == signature, (kernel, signature)
        assert {(kernel.arg_names.index(k),): v for k, v in job.constexprs} == constexprs, (kernel, constexprs)
        assert {(i,): [["tt.divisibility", 16]] for i in job.aligned} == {k: v for k, v in attrs.items() if v}
        assert all(getattr(options, k) == v for k, v in job.options), (kernel, options)
        print(kernel.__name__)
"""


def test_jobs_match_what_tritons_jit_would_compile_for_the_same_launch():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", SAME_AS_JIT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["_fwd_kernel", "_delta_kernel", "_bwd_kernel", "_mask_kernel", "_ln_fwd_kernel",
                                   "_ln_bwd_kernel", "_ce_kernel", "_rms_fwd_kernel", "_rms_bwd_kernel", "_rope_kernel",
                                   "_fwd_kernel", "_delta_kernel", "_bwd_kernel", "_ln_fwd_kernel", "_ln_bwd_kernel"]


def test_shared_memory_over_the_gpu_or_the_table_fails_and_spills_only_warn():
    job = gpu_matrix.unique_jobs(gpu_matrix.subset((TARGETS["sm_89"],)))[0]
    assert Result(job, shared=job.shared_bound, registers=128).status() == "ok"
    assert Result(job, shared=job.shared_bound, registers=255, spill_stores=8, spill_loads=8).status() == "ok, spills"
    over_table = Result(job, shared=job.shared_bound + KIB).status()
    assert over_table.startswith("FAIL") and "the launcher's table declares" in over_table
    over_gpu = Result(job, shared=100 * KIB).status()
    assert "> sm_89's 99 KiB" in over_gpu
    assert Result(job, error="CompilationError: at 12:8:\nDot shape too small").status() == \
        "FAIL: compile error: Dot shape too small"


def test_registers_and_spills_are_read_from_ptxas_log():
    log = ("ptxas info    : Compiling entry function '_fwd_kernel' for 'sm_90a'\n"
           "ptxas info    : Function properties for _fwd_kernel\n"
           "    240 bytes stack frame, 392 bytes spill stores, 388 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers, 240 bytes cumulative stack size\n")
    assert gpu_compile._parse_ptxas(log) == {"registers": 255, "spill_stores": 392, "spill_loads": 388}
    assert gpu_compile._parse_ptxas("") is None


def test_the_check_refuses_to_run_under_the_interpreter_and_unknown_targets():
    with pytest.raises(GPTError, match="unset TRITON_INTERPRET"):
        gpu_compile.main(["--subset"])
    with pytest.raises(GPTError, match=re.escape("--targets=sm_75: the check knows sm_80, sm_89, sm_90")):
        gpu_compile.parse_targets("sm_75")
