"""The real thing, shortened: the CPU Shakespeare config learns the corpus."""
import json

import pytest

from gpt.build import build_run
from gpt.config import load_config
from gpt.trainer import Trainer


@pytest.mark.long
def test_cpu_config_learns_shakespeare(shakespeare_data, tmp_path):
    cfg = load_config(["configs/shakespeare_char_cpu.yaml", f"--data_dir={shakespeare_data}", f"--out_dir={tmp_path}",
                       "--max_iters=200", "--lr_decay_iters=200", "--eval_interval=200", "--log_interval=50"])
    summary = Trainer(build_run(cfg)).run()
    evals = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    assert evals[0]["val_loss"] > 4.0  # ln(78) = 4.36 at init
    assert summary.last_val_loss < 2.6, summary
