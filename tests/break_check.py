"""The break check (docs/testing.md): make one deliberate break at a time in the product code, run the tests
named for it with -x, put the code back, and print whether a test failed (and which).

    python -m tests.break_check            # every break, a quarter of an hour on 2 cores
    python -m tests.break_check 3 17       # breaks 3 and 17

Run it on a clean checkout: each file is restored in a `finally`, but a kill -9 of this script would leave
its break in place (`git diff` shows it). It never commits. A break whose text is gone from the code fails
loudly: keep the list in step with the code it breaks.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

WT = Path(__file__).resolve().parents[1]
PY = sys.executable
T = "tests/gpt/test_trainer.py::"
D = "tests/distributed/"
BREAKS = [
 ("lr schedule never reaches the optimizer (single/DDP); the log still shows the schedule",
  [("gpt/strategy/single.py", '        set_lr(self.optimizer, lr)\n', ''),
   ("gpt/strategy/single.py", 'StepResult(total / self.local_accum, norm, applied, batches.data_s, self.optimizer.param_groups[0]["lr"],', 'StepResult(total / self.local_accum, norm, applied, batches.data_s, lr,')],
  [T+"test_every_step_uses_the_scheduled_lr_and_the_log_shows_what_the_optimizer_used", D+"test_ddp.py::test_two_ddp_ranks_take_the_one_process_steps"]),
 ("lr schedule never reaches DeepSpeed's optimizer",
  [("gpt/strategy/deepspeed.py", '        set_lr(self.client_optimizer, lr)\n', '')],
  [D+"test_deepspeed.py::test_zero1_takes_the_one_process_steps_skips_a_nan_step_and_exports"]),
 ("cosine decay replaced by linear decay (equal at the midpoint)",
  [("gpt/optim.py", "else 0.5 * (1.0 + math.cos(math.pi * ratio))", "else 1.0 - ratio")],
  ["tests/gpt/test_optim.py", T+"test_every_step_uses_the_scheduled_lr_and_the_log_shows_what_the_optimizer_used"]),
 ("no warmup",
  [("gpt/optim.py", "return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)", "return cfg.learning_rate")],
  ["tests/gpt/test_optim.py", T+"test_every_step_uses_the_scheduled_lr_and_the_log_shows_what_the_optimizer_used"]),
 ("gradient clipping off (single/DDP)",
  [("gpt/strategy/single.py", "norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)", "norm = torch.nn.utils.get_total_norm([p.grad for p in params])")],
  [T+"test_clipping_bounds_the_gradient_norm_the_optimizer_applies", D+"test_ddp.py::test_two_ddp_ranks_take_the_one_process_steps"]),
 ("gradient clipping off under DeepSpeed",
  [("gpt/strategy/deepspeed_config.py", '_own(cfg, "gradient_clipping", grad_clip, source, "--grad_clip")', '_own(cfg, "gradient_clipping", 0.0, source, "--grad_clip")')],
  [D+"test_deepspeed.py::test_zero1_takes_the_one_process_steps_skips_a_nan_step_and_exports"]),
 ("a checkpoint at every eval, improved or not",
  [("gpt/trainer.py", "(improved or t.always_save_checkpoint)", "True")],
  [T+"test_checkpoints_are_saved_when_val_improves_unless_always"]),
 ("always_save_checkpoint ignored",
  [("gpt/trainer.py", "(improved or t.always_save_checkpoint)", "improved")],
  [T+"test_checkpoints_are_saved_when_val_improves_unless_always"]),
 ("keep_last ignored (every entry kept)",
  [("gpt/checkpoint.py", "for old in entries[:-keep_last]:", "for old in entries[:0]:")],
  [T+"test_keep_last_keeps_the_newest_checkpoints_and_the_best"]),
 ("best.pt never moves",
  [("gpt/trainer.py", "saved_path, saved_at = self.save(best=improved), it", "saved_path, saved_at = self.save(best=False), it")],
  [T+"test_checkpoints_are_saved_when_val_improves_unless_always", T+"test_keep_last_keeps_the_newest_checkpoints_and_the_best"]),
 ("fp16 overflow steps not reported or counted",
  [("gpt/strategy/single.py", "applied = applied and self.scaler.get_scale() >= scale", "applied = True")],
  ["tests/reliability/test_bad_steps_and_saves.py::test_fp16_overflow_steps_are_skipped_reported_and_counted"]),
 ("a NaN step is applied",
  [("gpt/strategy/single.py", "applied = bool(torch.isfinite(norm))", "applied = True")],
  ["tests/reliability/test_bad_steps_and_saves.py"]),
 ("--max_bad_steps ignored",
  [("gpt/trainer.py", "if bad_steps >= t.max_bad_steps:", "if False:")],
  ["tests/reliability/test_bad_steps_and_saves.py"]),
 ("DeepSpeed ZeRO-0 fp32 applies a NaN step",
  [("gpt/strategy/deepspeed.py", "return not (self.zero_stage == 0 and self.dtype == torch.float32)", "return True")],
  [D+"test_deepspeed.py::test_zero0_in_one_process_takes_the_one_process_steps_and_stops_before_a_nan_step"]),
 ("DeepSpeed stops on a NaN loss where the engine would skip the step (the issue's report)",
  [("gpt/strategy/deepspeed.py", "if last and not self.engine_skips_nonfinite() and self.any_rank(not self._gradients_finite()):",
    "if self.any_rank(not bool(torch.isfinite(loss.detach()))):")],
  [D+"test_deepspeed.py::test_zero1_takes_the_one_process_steps_skips_a_nan_step_and_exports"]),
 ("DeepSpeed's skipped step reported as applied",
  [("gpt/strategy/deepspeed.py", "self.engine.skipped_steps == skipped, batches.data_s,", "True, batches.data_s,")],
  [D+"test_deepspeed.py::test_zero1_takes_the_one_process_steps_skips_a_nan_step_and_exports"]),
 ("DDP gradients never averaged (no_sync on every micro-batch)",
  [("gpt/strategy/ddp.py", "return contextlib.nullcontext() if last else self.model.no_sync()", "return self.model.no_sync()")],
  [D+"test_ddp.py::test_two_ddp_ranks_take_the_one_process_steps"]),
 ("a second Ctrl-C does not stop at once",
  [("gpt/stop.py", "            raise KeyboardInterrupt\n", "            return\n"),
   ("gpt/stop.py", "        signal.signal(signal.SIGINT, signal.default_int_handler)\n", "")],
  [T+"test_a_second_ctrl_c_stops_at_once_without_saving"]),
 ("SIGTERM not handled",
  [("gpt/stop.py", "for sig in (signal.SIGTERM, signal.SIGINT):", "for sig in (signal.SIGINT,):")],
  [T+"test_a_signal_finishes_the_step_saves_and_stops", "tests/reliability/test_kill_and_resume.py"]),
 ("time limit overshot (stops after the deadline)",
  [("gpt/stop.py", "+ 5.0 >= self.deadline:", ">= self.deadline + 10.0:")],
  [T+"test_time_limit_stops_before_the_deadline_with_a_checkpoint"]),
 ("GPT_DEBUG=1 ignored",
  [("gpt/cli.py", 'or os.environ.get("GPT_DEBUG", "") not in ("", "0")', 'or False')],
  ["tests/launch/test_cli.py::test_debug_or_gpt_debug_shows_the_traceback"]),
 ("--help leaves a key out",
  [("gpt/flags.py", '        lines.append(f"  --{key:<26} {spec.help}")', '        if key == "keep_last":\n            continue\n        lines.append(f"  --{key:<26} {spec.help}")')],
  ["tests/launch/test_cli.py::test_help_lists_every_key_with_what_it_does_and_its_default"]),
 ("auto ignores the deepspeed launcher",
  [("gpt/strategy/__init__.py", 'if denv.launcher == "deepspeed" or cfg.dist.zero_stage is not None:', 'if cfg.dist.zero_stage is not None:')],
  [D+"test_ddp.py::test_auto_strategy_follows_the_launcher_and_zero_stage", D+"test_deepspeed.py::test_the_deepspeed_launcher_picks_deepspeed_and_a_zero2_job_resumes_and_skips_a_nan_step"]),
 ("ZeRO checkpoint loaded on another world size without conversion",
  [("gpt/strategy/deepspeed.py", "if saved_world != self.denv.world_size and saved_stage > 0 and self.zero_stage > 0:", "if False:")],
  [D+"test_resharding.py::test_zero2_resumes_on_fewer_and_more_ranks_and_a_conversion_that_cannot_be_done_is_refused"]),
 ("--compile=True ignored by the Trainer",
  [("gpt/strategy/single.py", "torch.compile(model) if compile else model", "model")],
  [T+"test_compiled_training_gives_the_eager_losses_and_a_plain_checkpoint"]),
 ("--dtype=bfloat16 ignored by the Trainer (autocast off)",
  [("gpt/runtime.py", "    return torch.autocast(device_type=device.type, dtype=dtype)", "    return contextlib.nullcontext()")],
  [T+"test_bfloat16_training_computes_in_bf16_and_tracks_float32"]),
 ("sampler ignores --dtype",
  [("launch/sample.py", "    with autocast(device, dtype):", "    with autocast(device, torch.float32):")],
  ["tests/launch/test_sample_device.py"]),
 ("sampler ignores --device",
  [("launch/sample.py", "    dtype = resolve_dtype(cfg.dtype, device)", "    device = resolve_device('auto')\n    dtype = resolve_dtype(cfg.dtype, device)")],
  ["tests/launch/test_sample_device.py"]),
 ("loader copies each shard into memory",
  [("data/reader.py", "tokens = np.frombuffer(mapped, dtype=info.dtype, count=info.tokens, offset=info.offset)", "tokens = np.frombuffer(mapped, dtype=info.dtype, count=info.tokens, offset=info.offset).copy()")],
  ["tests/data/test_memory.py"]),
 ("prepare reads a whole text file at once",
  [("data/sources.py", "chunk = stream.read(self.block_bytes)", "chunk = stream.read()")],
  ["tests/data/test_memory.py"]),
 ("checkpoint written in place (no temporary + rename)",
  [("gpt/checkpoint.py", '    tmp = out / f".{final.name}.tmp-{os.getpid()}"\n', '    tmp = final\n')],
  ["tests/reliability/test_kill_and_resume.py", T+"test_failed_save_leaves_the_previous_checkpoint"]),
 ("resume does not restore the RNG streams",
  [("gpt/build.py", "        set_rng_state(rngs[run.denv.rank])", "        pass")],
  [T+"test_resumed_run_repeats_the_uninterrupted_losses_exactly", "tests/reliability/test_kill_and_resume.py"]),
 ("resume restarts the loader from step 0 (what a restarted rank would then see)",
  [("gpt/build.py", '    run.loader.load_state_dict(state["loader"])', '    pass')],
  [T+"test_resumed_run_repeats_the_uninterrupted_losses_exactly", "tests/reliability/test_dead_rank.py"]),
 ("lr schedule never reaches the optimizer: the DDP job alone",
  [("gpt/strategy/single.py", '        set_lr(self.optimizer, lr)\n', '')],
  [D+"test_ddp.py::test_two_ddp_ranks_take_the_one_process_steps"]),
 ("resume restarts the loader from step 0: the torchrun-restarted job alone",
  [("gpt/build.py", '    run.loader.load_state_dict(state["loader"])', '    pass')],
  ["tests/reliability/test_dead_rank.py"]),
 ("layernorm kernel's weight gradient 10% off",
  [("kernels/layernorm.py", "    tl.store(DW_PART + pid * N + cols, dw, mask=cmask)", "    tl.store(DW_PART + pid * N + cols, dw * 0.9, mask=cmask)")],
  ["tests/kernels/test_layernorm.py"]),
]

def run(tests: list[str]) -> tuple[int, list[str], float, str]:
    t0 = time.time()
    r = subprocess.run([PY, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests], cwd=WT,
                       env={**os.environ, "PYTHONPATH": str(WT)}, capture_output=True, text=True, timeout=1200)
    tail = [l for l in r.stdout.splitlines() if l.startswith("FAILED") or l.startswith("ERROR")]
    return r.returncode, tail, time.time() - t0, r.stdout[-600:]

def main(only: list[str]) -> int:
    missed = 0
    for i, (name, edits, tests) in enumerate(BREAKS):
        if only and str(i) not in only:
            continue
        originals: dict[Path, str] = {}
        try:
            for f, old, new in edits:
                p = WT / f
                originals.setdefault(p, p.read_text())
                cur = p.read_text()
                assert cur.count(old) == 1, f"break {i}: {old!r} is in {f} {cur.count(old)} times, not once"
                p.write_text(cur.replace(old, new))
            code, failed, secs, tail = run(tests)
        finally:
            for p, text in originals.items():
                p.write_text(text)
        missed += code == 0
        print(json.dumps({"i": i, "break": name, "caught": code != 0, "failed": failed, "s": round(secs),
                          "tail": tail if not failed else ""}), flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
