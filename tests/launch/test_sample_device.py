"""launch/sample.py computes on the --device and in the --dtype it is given."""
import pytest
import torch
from torch.nn.modules.module import register_module_forward_hook

from gpt.build import build_run
from gpt.cli import run_main
from gpt.config import load_config
from gpt.trainer import Trainer
from tests.conftest import tiny_argv
from tests.launch.test_bad_inputs import entry


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    Trainer(build_run(load_config(tiny_argv(tiny_data, out, max_iters=2, eval_interval=2)), verbose=False)).run()
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bfloat16", "float32"])
def test_sample_runs_on_the_device_and_in_the_dtype_asked_for(trained, tmp_path, monkeypatch, dtype):
    # `auto` would now pick an accelerator this machine lacks: only a sampler that honours --device=cpu runs
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    outputs = set()
    hook = register_module_forward_hook(
        lambda module, args, out: outputs.add((out.device.type, out.dtype)) if isinstance(module, torch.nn.Linear) else None)
    try:
        run_main(entry("launch/sample.py"), [f"--out_dir={trained}", f"--output_dir={tmp_path}", "--num_samples=1",
                                             "--max_new_tokens=5", "--device=cpu", f"--dtype={str(dtype)[6:]}"])
    finally:
        hook.remove()
    assert outputs == {("cpu", dtype)}  # every linear layer computed there, in that precision
    assert (tmp_path / "sample_001.txt").is_file()
