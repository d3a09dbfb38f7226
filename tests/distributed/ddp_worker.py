"""Run under torchrun by the tests: train, then record a digest of this rank's parameters."""
import hashlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gpt.config import load_config  # noqa: E402
from gpt.trainer import Trainer  # noqa: E402

trainer = Trainer(load_config(sys.argv[1:]))
trainer.run()
digest = hashlib.sha256()
for name, p in sorted(trainer.strategy.raw_model.state_dict().items()):
    digest.update(name.encode() + p.detach().cpu().numpy().tobytes())
Path(trainer.cfg.train.out_dir, f"params_rank{os.environ['RANK']}.json").write_text(json.dumps(digest.hexdigest()))
