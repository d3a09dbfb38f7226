"""Every mistake a user can make at the command line: a non-zero exit and one clear line, never a traceback."""
import importlib.util
import sys

import pytest
import torch

from gpt.cli import run_main
from tests.conftest import REPO, tiny_argv


def entry(script: str):
    spec = importlib.util.spec_from_file_location(script.replace("/", "_")[:-3], REPO / script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module.main


CASES = [
    # (script, flags, launcher environment, words the message must contain)
    ("launch/train.py", ["--n_layr=2"], {}, ["unknown config key 'n_layr'", "n_layer"]),
    ("launch/train.py", ["--batch_size=big"], {}, ["expected an integer"]),
    ("launch/train.py", ["--bias=perhaps"], {}, ["True or False"]),
    ("launch/train.py", ["--learning_rate=fast"], {}, ["expected a number"]),
    ("launch/train.py", ["--learning_rate=-3"], {}, ["must not be negative"]),
    ("launch/train.py", ["--n_embd=100", "--n_head=7"], {}, ["not divisible"]),
    ("launch/train.py", ["--block_size=0"], {}, ["at least 1"]),
    ("launch/train.py", ["--device=tpu"], {}, ["not a device"]),
    ("launch/train.py", ["--dtype=fp8"], {}, ["dtype"]),
    ("launch/train.py", ["--init_from=gpt2-xl"], {}, ["init_from"]),
    ("launch/train.py", ["--keep_last=0"], {}, ["keep_last"]),
    ("launch/train.py", ["--time_limit=soon"], {}, ["not a duration"]),
    ("launch/train.py", ["--max_bad_steps=0"], {}, ["max_bad_steps"]),
    ("launch/train.py", ["--strategy=fsdp1"], {}, ["strategy", "fsdp"]),
    ("launch/train.py", ["--strategy=fsdp", "--fsdp_accumulation=sometimes"], {}, ["fsdp_accumulation", "unsharded"]),
    ("launch/train.py", ["--zero_stage=9"], {}, ["ZeRO stage"]),
    ("launch/train.py", ["--n_layer"], {}, ["has no value"]),
    ("launch/train.py", ["{out}/missing.yaml"], {}, ["does not exist"]),
    ("launch/train.py", ["{bad_yaml}"], {}, ["YAML syntax error at line"]),
    ("launch/train.py", ["--dataset=unprepared", "--data_dir={out}"], {}, ["is not prepared", "prepare.py"]),
    ("launch/train.py", ["{tiny}", "--init_from=resume"], {}, ["no checkpoint at"]),
    ("launch/train.py", ["{tiny}", "--device=cuda"], {}, ["no CUDA GPU"]),
    ("launch/train.py", ["{tiny}", "--dtype=float16"], {}, ["float16"]),
    ("launch/train.py", ["{tiny}", "--gradient_accumulation_steps=3"], {"RANK": "0", "WORLD_SIZE": "2",
     "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}, ["divisible by the world size 2"]),
    ("launch/train.py", ["{tiny}"], {"RANK": "5", "WORLD_SIZE": "2"}, ["outside WORLD_SIZE"]),
    ("launch/train.py", ["{tiny}"], {"RANK": "0", "WORLD_SIZE": "2"}, ["MASTER_ADDR"]),
    ("launch/train.py", ["{tiny}", "--strategy=single", "--gradient_accumulation_steps=2"],
     {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}, ["--strategy=single"]),
    ("launch/sample.py", ["--out_dir={out}/nothing"], {}, ["no checkpoint at"]),
    ("launch/sample.py", ["--out_dir={corrupt}"], {}, ["not a readable checkpoint"]),
    ("launch/sample.py", ["--temperature=-0.5"], {}, ["temperature"]),
    ("launch/sample.py", ["--top_p=1.5"], {}, ["top_p"]),
    ("launch/sample.py", ["--top_k=0"], {}, ["top_k"]),
    ("launch/sample.py", ["--out_dir={run}", "--start=FILE:/no/such/prompt.txt"], {}, ["cannot read the prompt file"]),
    ("launch/sample.py", ["--out_dir={run}", "--start=ROMEO: ☃"], {}, ["'☃'"]),
    ("launch/sample.py", ["--out_dir={run}", "--start="], {}, ["prompt is empty"]),
    ("launch/sample.py", ["extra"], {}, ["unexpected argument"]),
    ("launch/sample.py", ["--window_shift=0"], {}, ["window_shift", "at least 1"]),
    ("data/prepare.py", ["--dataset=x", "--input=/no/such/dir"], {}, ["does not exist"]),
    ("data/prepare.py", ["--dataset=x"], {}, ["--input"]),
    ("launch/bench.py", ["warp-drive"], {}, ["unknown mode"]),
    ("launch/bench.py", ["sample", "--variants=nanogpt,turbo"], {}, ["not a variant", "shift1+serial"]),
    ("launch/export_checkpoint.py", ["--out_dir={out}/nothing", "--output_dir={out}/plain"], {}, ["no checkpoint at"]),
    ("launch/export_checkpoint.py", ["--out_dir={run}", "--output_dir={run}"], {}, ["--output_dir must differ"]),
]


@pytest.fixture(scope="module")
def places(tiny_data, tmp_path_factory):
    from gpt.build import build_run
    from gpt.config import load_config
    from gpt.trainer import Trainer

    root = tmp_path_factory.mktemp("bad")
    run = root / "run"
    Trainer(build_run(load_config(tiny_argv(tiny_data, run, max_iters=2, eval_interval=2)))).run()
    (root / "bad.yaml").write_text("n_layer: [2\n")
    (root / "corrupt").mkdir()
    (root / "corrupt" / "ckpt.pt").write_bytes(b"\x00" * 100)
    tiny = root / "tiny.yaml"
    tiny.write_text("".join(f"{a[2:].split('=', 1)[0]}: {a.split('=', 1)[1]}\n"
                            for a in tiny_argv(tiny_data, root / "fresh")))
    return {"out": str(root), "run": str(run), "bad_yaml": str(root / "bad.yaml"), "corrupt": str(root / "corrupt"),
            "tiny": str(tiny)}


def test_there_are_at_least_twenty_cases():
    assert len(CASES) >= 20


@pytest.mark.parametrize("script, flags, env, words", CASES, ids=[" ".join([c[0].split("/")[-1]] + c[1])[:60] for c in CASES])
def test_bad_input_exits_with_one_clear_line(places, monkeypatch, capsys, script, flags, env, words):
    if "--device=cuda" in flags and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GPT_DEBUG"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as exit_:
        run_main(entry(script), [f.format(**places) for f in flags])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    for word in words:
        assert word in err
