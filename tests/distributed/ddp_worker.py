"""Run under torchrun by the tests: train, then record a digest of this rank's parameters."""
import hashlib
import json
import os
import sys
from pathlib import Path

from gpt.build import build_run
from gpt.config import load_config
from gpt.trainer import Trainer

run = build_run(load_config(sys.argv[1:]))
Trainer(run).run()
digest = hashlib.sha256()
for name, p in sorted(run.model.state_dict().items()):
    digest.update(name.encode() + p.detach().cpu().numpy().tobytes())
Path(run.cfg.train.out_dir, f"params_rank{os.environ['RANK']}.json").write_text(json.dumps(digest.hexdigest()))
