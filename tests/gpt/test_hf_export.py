"""--format=hf: transformers loads an exported run and computes its logits; the export imports back."""
import json

import pytest
import torch

from gpt.build import build_run
from gpt.checkpoint import load_checkpoint, model_from_checkpoint
from gpt.cli import run_main
from gpt.config import load_config
from gpt.errors import GPTError
from gpt.hf_export import export_hf
from gpt.pretrained import pretrained_model
from gpt.trainer import Trainer
from tests.conftest import tiny_argv
from tests.launch.test_bad_inputs import entry

export = entry("launch/export_checkpoint.py")


def train(argv):
    Trainer(build_run(load_config(argv))).run()


@pytest.fixture(scope="module")
def gpt2_run(gpt2_data, tmp_path_factory):
    """A run on the made-up GPT-2 tokens, without biases and with its vocabulary padded by 13 rows."""
    out = tmp_path_factory.mktemp("gpt2-run")
    train(tiny_argv(gpt2_data, out, dataset="tinygpt2", vocab_size=314, max_iters=4, eval_interval=4))
    return out


def transformers_logits(folder, idx):
    from transformers import GPT2LMHeadModel

    with torch.no_grad():
        return GPT2LMHeadModel.from_pretrained(folder).eval()(idx).logits


def our_logits(out_dir, idx):
    with torch.no_grad():
        return model_from_checkpoint(load_checkpoint(out_dir)).eval()(idx)[0]


def test_a_gpt2_run_exports_to_transformers_with_its_logits_and_tokenizer(offline_gpt2, gpt2_run, tmp_path):
    _, snapshot, encoding = offline_gpt2
    run_main(export, [f"--out_dir={gpt2_run}", f"--output_dir={tmp_path}", "--format=hf"])
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "model.safetensors", "meta.json", "vocab.json",
                                                   "merges.txt", "tokenizer.json", "tokenizer_config.json"}
    V = encoding.n_vocab
    idx = torch.randint(0, V, (3, 16), generator=torch.Generator().manual_seed(0))
    ours, theirs = our_logits(gpt2_run, idx), transformers_logits(tmp_path, idx)
    assert ours.shape[-1] == V + 13 and theirs.shape[-1] == V  # the padding rows stay behind
    worst = (ours[..., :V] - theirs).abs().max().item()
    assert worst < 1e-5, worst
    print(f"export: largest logit difference, ours vs transformers (fp32, CPU): {worst:.2e}")
    assert json.loads((tmp_path / "vocab.json").read_text()) == json.loads((snapshot / "vocab.json").read_text())
    from transformers import AutoTokenizer
    text = "ROMEO:\nIt's 2024, isn't it? 床前 🙂"
    assert AutoTokenizer.from_pretrained(tmp_path).encode(text) == encoding.encode_ordinary(text)


def test_an_export_imports_back_with_the_same_logits(offline_gpt2, gpt2_run, tmp_path):
    run_main(export, [f"--out_dir={gpt2_run}", f"--output_dir={tmp_path}", "--format=hf"])
    model, tokenizer, _ = pretrained_model(str(tmp_path))
    assert tokenizer == load_checkpoint(gpt2_run)["tokenizer"]  # meta.json carries it
    idx = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        back = model.eval()(idx)[0]
    V = tokenizer["vocab_size"]
    assert (back - our_logits(gpt2_run, idx)[..., :V]).abs().max().item() < 1e-6


def test_a_character_model_exports_with_its_meta(tiny_data, tmp_path):
    run = tmp_path / "run"
    train(tiny_argv(tiny_data, run, max_iters=2, eval_interval=2, bias=True))
    out = tmp_path / "hf"
    run_main(export, [f"--out_dir={run}", f"--output_dir={out}", "--format=hf"])
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "meta.json"}
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tokenizer"]["kind"] == "char" and "R" in meta["tokenizer"]["chars"]
    V = meta["tokenizer"]["vocab_size"]
    idx = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(2))
    assert (our_logits(run, idx) - transformers_logits(out, idx)).abs().max().item() < 1e-5


def test_plain_stays_the_default_and_unknown_formats_are_explained(gpt2_run, tmp_path, capsys):
    run_main(export, [f"--out_dir={gpt2_run}", f"--output_dir={tmp_path}"])
    assert (tmp_path / "ckpt.pt").is_file()
    with pytest.raises(SystemExit):
        run_main(export, [f"--out_dir={gpt2_run}", f"--output_dir={tmp_path}", "--format=onnx"])
    assert "--format='onnx' is not one of plain, hf" in capsys.readouterr().err


def test_a_recipe_model_refuses_the_gpt2_export_and_writes_nothing(tiny_data, tmp_path):
    run = tmp_path / "run"
    train(tiny_argv(tiny_data, run, max_iters=2, eval_interval=2, pos_emb="rope", norm="rmsnorm", mlp="relu2"))
    out = tmp_path / "hf"
    with pytest.raises(SystemExit):
        run_main(export, [f"--out_dir={run}", f"--output_dir={out}", "--format=hf"])
    assert not out.exists()
    with pytest.raises(GPTError, match="pos_emb=rope, norm=rmsnorm, mlp=relu2.*GPT2LMHeadModel"):
        export_hf(load_checkpoint(run), out)
