"""HellaSwag scoring: the likeliest ending wins (total loss for acc, mean loss for acc_norm), shared over ranks."""
import json

import pytest
import torch

from data.tokenizer import CharTokenizer
from gpt.build import build_run
from gpt.config import ModelConfig, load_config
from gpt.errors import GPTError
from gpt.hellaswag import HellaSwag, read_examples, tokenize
from gpt.model import GPT
from gpt.trainer import Trainer
from tests.conftest import tiny_argv
from tests.gpt.test_wandb import history, offline_runs

CHARS = CharTokenizer(sorted(set("abcdx .")))
# a model that always gives 'a' logit 2 and every other character 0: per token, 'a' costs 0.91 nats, the rest 2.91
ITEMS = [
    {"ctx": "x", "endings": ["aaa", "bbb", "ccc", "ddd"], "label": 0},  # right either way
    # " ab" has the lowest total (6.7 vs 12.0), " aaaaaaaaaa" the lowest mean per token (1.09 vs 2.24)
    {"ctx": "x", "endings": ["ab", "aaaaaaaaaa", "bb", "cb"], "label": 1},
    {"ctx": "x", "endings": ["a", "b", "c", "d"], "label": 2},  # the model is wrong either way
]


def write_items(path, items):
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    return path


def prefers_a() -> GPT:
    """A real GPT whose every position predicts 'a': zero blocks, ln_f outputs e0, and only 'a' reads e0."""
    model = GPT(ModelConfig(block_size=32, vocab_size=CHARS.vocab_size, n_layer=1, n_head=1, n_embd=8, bias=True))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        model.transformer.wte.weight[CHARS.encode("a")[0], 0] = 2.0
    return model.eval()


def test_a_model_that_prefers_an_ending_picks_it_by_total_and_by_mean_loss(tmp_path):
    task = HellaSwag.from_file(write_items(tmp_path / "h.jsonl", ITEMS), CHARS, block_size=32)
    model = prefers_a()
    scores = task.score(lambda tokens: model(tokens)[0])
    assert scores == pytest.approx({"hellaswag_acc": 1 / 3, "hellaswag_acc_norm": 2 / 3})


def test_ranks_share_the_items_and_make_the_same_number_of_forwards(tmp_path):
    task = HellaSwag.from_file(write_items(tmp_path / "h.jsonl", ITEMS), CHARS, block_size=32)
    model = prefers_a()
    calls = {0: 0, 1: 0}

    def counted(rank):
        def logits_of(tokens):
            calls[rank] += 1
            return model(tokens)[0]
        return logits_of
    shares = [task.counts(counted(rank), rank, world=2) for rank in (0, 1)]
    assert torch.equal(shares[0] + shares[1], task.counts(lambda t: model(t)[0]))
    assert shares[0][2] == 2 and shares[1][2] == 1 and calls == {0: 2, 1: 2}


def test_rows_longer_than_the_context_keep_their_ending():
    item = tokenize({"ctx": "x" * 20, "endings": ["ab", "abc", "a", "b"], "label": 0}, CHARS.encode, block_size=8)
    assert item.tokens.shape == (4, 8)
    assert CHARS.decode(item.tokens[1].tolist()) == "xxxx abc"
    assert item.ending[1].tolist() == [False] * 4 + [True] * 4
    assert CHARS.decode(item.tokens[2].tolist()) == "xxxxxx a" and item.ending[2].tolist() == [False] * 6 + [True] * 2


def test_missing_and_malformed_files_are_explained(tmp_path):
    with pytest.raises(GPTError, match="no HellaSwag file at .*rowanz/hellaswag"):
        read_examples(tmp_path / "none.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ITEMS[0]) + "\n" + json.dumps({"ctx": "x", "endings": ["a"], "label": 0}) + "\n")
    with pytest.raises(GPTError, match="line 2, is not a HellaSwag item"):
        read_examples(bad)
    assert len(read_examples(bad, limit=1)) == 1


def test_a_run_scores_hellaswag_at_each_eval_and_logs_it(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    items = [{"ctx": "ROMEO:", "endings": ["But soft", "thou light", "JULIET", "wherefore art"], "label": 0},
             {"ctx": "O Romeo, Romeo,", "endings": ["wherefore art thou", "ROMEO:", "light", "window"], "label": 0}]
    data = write_items(tmp_path / "h.jsonl", items * 3)
    out = tmp_path / "run"
    Trainer(build_run(load_config(tiny_argv(tiny_data, out, max_iters=2, eval_interval=2, hellaswag_data=data,
                                            hellaswag_limit=4, wandb_log=True)))).run()
    evals = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]
    assert [r["iter"] for r in evals] == [0, 2]
    assert all(r["hellaswag_acc"] in (0, 0.25, 0.5, 0.75, 1) and 0 <= r["hellaswag_acc_norm"] <= 1 for r in evals)
    assert "hellaswag acc norm" in capsys.readouterr().out
    # wandb.finish() can return before W&B's service process has written the run's last records (2 runs in 5
    # of the suite here read an empty history); ending the service, as the end of a training process does,
    # waits for them
    import wandb
    wandb.teardown()
    (run_dir,) = offline_runs(out)
    logged = [r for r in history(run_dir) if "eval/val_loss" in r]
    assert [(r["eval/hellaswag_acc"], r["eval/hellaswag_acc_norm"]) for r in logged] == \
        [(r["hellaswag_acc"], r["hellaswag_acc_norm"]) for r in evals]
