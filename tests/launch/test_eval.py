"""launch/eval.py --task=hellaswag: a checkpoint or a Hugging Face GPT-2 scored from a local file."""
import json

import pytest
import torch

from data.tokenizer import tokenizer_from_meta
from gpt.build import build_run
from gpt.cli import run_main
from gpt.config import load_config
from gpt.hellaswag import HellaSwag
from gpt.trainer import Trainer
from tests.conftest import run_script, tiny_argv
from tests.launch.test_bad_inputs import entry

ITEMS = [{"ctx": "ROMEO:", "endings": ["But soft", "thou light", "JULIET", "wherefore art"], "label": 0},
         {"ctx": "O Romeo, Romeo,", "endings": ["wherefore art thou", "ROMEO:", "light", "window"], "label": 2},
         {"ctx": "JULIET:", "endings": ["O Romeo", "But", "soft", "breaks"], "label": 1}]


def write_items(path):
    path.write_text("".join(json.dumps(item) + "\n" for item in ITEMS), encoding="utf-8")
    return path


def result_line(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_a_checkpoint_is_scored_as_a_user_runs_it(tiny_data, tmp_path):
    Trainer(build_run(load_config(tiny_argv(tiny_data, tmp_path / "run", max_iters=2, eval_interval=2)))).run()
    result = run_script("launch/eval.py", "--task=hellaswag", f"--data={write_items(tmp_path / 'h.jsonl')}",
                        f"--out_dir={tmp_path / 'run'}", "--log_every=2")
    assert result.returncode == 0, result.stderr
    assert "scoring 3 items" in result.stdout and "2/3 items" in result.stdout
    scores = result_line(result.stdout)
    assert scores["items"] == 3 and scores["acc"] in (0, 1 / 3, 0.6667, 1) and 0 <= scores["acc_norm"] <= 1


def test_a_snapshot_scores_what_transformers_logits_score(offline_gpt2, tmp_path, capsys):
    from transformers import GPT2LMHeadModel

    data = write_items(tmp_path / "h.jsonl")
    run_main(entry("launch/eval.py"), ["--task=hellaswag", f"--data={data}", "--init_from=gpt2", "--device=cpu"])
    got = result_line(capsys.readouterr().out)
    hf = GPT2LMHeadModel.from_pretrained(offline_gpt2[1]).eval()
    task = HellaSwag.from_file(data, tokenizer_from_meta({"kind": "gpt2", "vocab_size": 301, "eot": 300}), 64)
    with torch.no_grad():
        expected = task.score(lambda tokens: hf(tokens).logits)
    assert (got["acc"], got["acc_norm"]) == (round(expected["hellaswag_acc"], 4), round(expected["hellaswag_acc_norm"], 4))
    assert got["model"] == "--init_from=gpt2"


@pytest.mark.parametrize("argv, words", [
    (["--task=hellaswag"], ["--data is required", "hellaswag_val.jsonl"]),
    (["--task=mmlu", "--data=x"], ["--task='mmlu' is not one of hellaswag"]),
    (["--data=/no/such/file.jsonl", "--init_from=/no/such/folder"], ["--init_from='/no/such/folder'"]),
])
def test_mistakes_are_explained(argv, words, capsys):
    with pytest.raises(SystemExit):
        run_main(entry("launch/eval.py"), argv)
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
