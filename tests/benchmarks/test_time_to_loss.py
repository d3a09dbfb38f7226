"""The time-to-loss benchmark: a tiny race end to end, its target, its table and plot; its run names."""
from __future__ import annotations

import pytest
import yaml

from benchmarks import time_to_loss as bench
from gpt.errors import GPTError

TINY = dict(dataset="tiny", n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4, max_iters=8,
            lr_decay_iters=8, warmup_iters=0, learning_rate=3e-3, device="cpu", dropout=0.0)
FAST = dict(TINY, max_iters=4, lr_decay_iters=4, optimizer="muon", pos_emb="rope", mlp="relu2", lr_schedule="wsd",
            tie_embeddings=False, zero_init=True, learning_rate=1e-2)


@pytest.fixture
def configs(tmp_path):
    paths = {}
    for name, values in (("base", TINY), ("fast", FAST)):
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(values))
    return paths


def argv(tiny_data, configs, tmp_path, *extra):
    return [f"--baseline={configs['base']}", f"--fast={configs['fast']}", f"--data_dir={tiny_data}", "--repeats=2",
            "--evals=2", "--eval_windows=16", "--eval_batch=8", "--slice_steps=2", f"--plot={tmp_path / 'ttl.png'}",
            *extra]


def test_a_tiny_race_prints_the_table_last_and_draws_the_plot(tiny_data, configs, tmp_path, capsys):
    bench.main(argv(tiny_data, configs, tmp_path))
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-4].startswith("| run | iters | tokens/iter |")
    rows = {r[0]: r for r in ([c.strip() for c in line.split("|")[1:-1]] for line in out[-2:])}
    assert set(rows) == {"baseline", "fast"} and rows["baseline"][1:3] == ["8", "64"] and rows["fast"][1] == "4"
    assert rows["baseline"][7] == "1.00x"  # paired with itself
    target = float(next(line for line in out if line.startswith("target val loss")).split()[3])
    # the default target is the baseline's final val loss, worst repeat: every baseline repeat reaches it
    finals = [float(line.rsplit("val ", 1)[1]) for line in out if line.startswith("baseline #") and "iter 8," in line]
    assert len(finals) == 2 and target == pytest.approx(max(finals), abs=1e-4)
    assert "not reached" not in rows["baseline"][5]
    assert (tmp_path / "ttl.png").stat().st_size > 10_000
    assert any(line.startswith("fast: optimizer: Muon on 4 hidden matrices") for line in out)


def test_the_runs_interleave_and_only_their_steps_are_timed(tiny_data, configs, tmp_path):
    cfg, overrides = bench.parse(argv(tiny_data, configs, tmp_path, "--evals=4"))
    order = []
    real = bench.RaceRun.steps

    def spy(self, n):
        order.append(self.name)
        real(self, n)

    bench.RaceRun.steps = spy
    try:
        runs, target = bench.race(cfg, bench.run_configs(cfg, overrides), say=lambda _: None)
    finally:
        bench.RaceRun.steps = real
    assert order[:4] == ["baseline", "fast", "baseline", "fast"]  # least progressed first: both from the start
    assert all(len(r.evals) == 4 and r.evals[-1].iter == r.max_iters for r in runs)
    for r in runs:
        times = [e.train_s for e in r.evals]
        assert times == sorted(times) and times[-1] == pytest.approx(r.train_s)
    assert target == max(r.evals[-1].val_loss for r in runs if r.name == "baseline")


def test_run_names_expand_and_mistakes_are_explained(tiny_data, configs, tmp_path):
    cfg, overrides = bench.parse(argv(tiny_data, configs, tmp_path, "--runs=baseline,tuned_lr,ablation,"
                                                                    "big=fast:batch_size=8:muon_lr=0.05"))
    named = dict(bench.run_configs(cfg, overrides))
    assert list(named)[:2] == ["baseline", "tuned_lr"] and f"no_{next(iter(bench.ABLATIONS))}" in named
    assert named["tuned_lr"].optim.learning_rate == bench.TUNED_LR["learning_rate"]
    assert named["no_muon"].optim.optimizer == "adamw" and named["no_rope"].model.pos_emb == "learned"
    assert named["big"].data.batch_size == 8 and named["big"].optim.muon_lr == 0.05
    for runs, match in (("baseline,turbo", "not a run"), ("baseline,fast,fast", "twice"), ("fast", "no default target"),
                        ("baseline,x=fast:n_layr=2", "Did you mean 'n_layer'")):
        with pytest.raises(GPTError, match=match):
            c, o = bench.parse(argv(tiny_data, configs, tmp_path, f"--runs={runs}"))
            bench.run_configs(c, o)
