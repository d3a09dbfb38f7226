"""The entry points as a user runs them: outputs on success, one clear paragraph on error."""
import json
import subprocess

import pytest

from data.prepare import PrepareConfig
from gpt.cli import run_main
from gpt.config import Config
from gpt.flags import field_specs
from launch.sample import SampleConfig
from tests.conftest import run_script, tiny_argv
from tests.launch.test_bad_inputs import entry


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = run_script("launch/train.py", *tiny_argv(tiny_data, out, max_iters=4, eval_interval=2))
    assert result.returncode == 0, result.stderr
    assert "parameters:" in result.stdout and "val loss" in result.stdout
    return out


def in_process(capsys, script: str, *args: str) -> subprocess.CompletedProcess:
    """`python <script> args` run in this process (a subprocess would add only its start-up, seconds here):
    its exit code and printed output."""
    capsys.readouterr()
    try:
        run_main(entry(script), list(args))
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess([script, *args], code, out, err)


def sample(capsys, trained, tmp_path, *args):
    return in_process(capsys, "launch/sample.py", f"--out_dir={trained}", f"--output_dir={tmp_path / 'samples'}",
                      "--max_new_tokens=30", *args)


def test_sample_prints_numbered_samples_and_writes_one_file_each(trained, tmp_path):
    # the one sample run started as a user starts it; the others run in this process
    result = run_script("launch/sample.py", f"--out_dir={trained}", f"--output_dir={tmp_path / 'samples'}",
                        "--max_new_tokens=30", "--start=ROMEO:", "--num_samples=3", "--top_p=0.9")
    assert result.returncode == 0, result.stderr
    for i in (1, 2, 3):
        assert f"sample {i}/3" in result.stdout
    files = sorted((tmp_path / "samples").glob("sample_*.txt"))
    assert len(files) == 3
    assert all(f.read_text().startswith("ROMEO:") and len(f.read_text()) == len("ROMEO:") + 30 for f in files)


def test_sample_with_a_seed_is_reproducible_and_reads_prompt_files(trained, tmp_path, capsys):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("JULIET:\n")
    a = sample(capsys, trained, tmp_path, f"--start=FILE:{prompt}", "--seed=5", "--num_samples=2")
    b = sample(capsys, trained, tmp_path, f"--start=FILE:{prompt}", "--seed=5", "--num_samples=2")
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout and "JULIET:\n" in a.stdout


def test_streamed_samples_equal_the_non_streamed_ones(trained, tmp_path, capsys):
    args = ("--start=ROMEO:", "--seed=11", "--num_samples=2", "--top_k=10", "--top_p=0.95")
    plain = in_process(capsys, "launch/sample.py", f"--out_dir={trained}", f"--output_dir={tmp_path / 'a'}",
                       "--max_new_tokens=30", *args)
    streamed = in_process(capsys, "launch/sample.py", f"--out_dir={trained}", f"--output_dir={tmp_path / 'b'}",
                          "--max_new_tokens=30", "--stream=True", *args)
    assert plain.returncode == 0 and streamed.returncode == 0, plain.stderr + streamed.stderr
    samples = lambda out: out.rsplit("---------- 2 sample(s)", 1)[0]  # the last line names the output_dir
    assert samples(streamed.stdout) == samples(plain.stdout) and "sample 2/2" in plain.stdout
    for name in ("sample_001.txt", "sample_002.txt"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()


def test_sample_index_says_how_the_samples_were_made(trained, tmp_path, capsys):
    result = sample(capsys, trained, tmp_path, "--start=ROMEO:", "--num_samples=2", "--temperature=0", "--seed=9")
    assert result.returncode == 0, result.stderr
    index = json.loads((tmp_path / "samples" / "index.json").read_text())
    assert index["prompt"] == "ROMEO:" and index["seed"] == 9 and index["checkpoint_iter"] == 4
    assert index["settings"]["temperature"] == 0 and index["settings"]["max_new_tokens"] == 30
    assert index["samples"] == ["sample_001.txt", "sample_002.txt"]
    first, second = (tmp_path / "samples" / name for name in index["samples"])
    assert first.read_text() == second.read_text()  # greedy: the seed changes nothing


def test_batched_samples_are_the_ones_drawn_alone_with_their_seeds(trained, tmp_path, capsys):
    # sample i draws with seed + i - 1 whatever --num_samples is; 30 tokens pass block_size=16
    three = sample(capsys, trained, tmp_path / "three", "--start=ROMEO:", "--seed=5", "--num_samples=3")
    alone = sample(capsys, trained, tmp_path / "alone", "--start=ROMEO:", "--seed=7", "--num_samples=1")
    assert three.returncode == 0 and alone.returncode == 0, three.stderr + alone.stderr
    index = json.loads((tmp_path / "three" / "samples" / "index.json").read_text())
    assert index["seeds"] == [5, 6, 7] and index["settings"]["window_shift"] is None
    third = (tmp_path / "three" / "samples" / "sample_003.txt").read_text()
    assert third == (tmp_path / "alone" / "samples" / "sample_001.txt").read_text()


def test_a_window_shift_larger_than_the_block_is_refused(trained, tmp_path, capsys):
    result = sample(capsys, trained, tmp_path, "--window_shift=17")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "block_size of 16" in result.stderr and "1 .. 16" in result.stderr


def test_sample_benchmark_prints_a_table_where_equal_samples_share_a_letter(trained, capsys):
    result = in_process(capsys, "launch/bench.py", "sample", f"--out_dir={trained}", "--max_new_tokens=24", "--rounds=1",
                        "--variants=nanogpt,shift1+serial,nocache,default")
    assert result.returncode == 0, result.stderr
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line}
    assert list(rows) == ["variant", "nanogpt", "shift1+serial", "nocache", "default"]
    text = lambda name: rows[name][rows["variant"].index("text")]
    # the cache and batching change nothing; the default window (8 of block 16) keeps its own contexts
    assert text("nanogpt") == text("shift1+serial") == "A" and text("nocache") == text("default")
    assert rows["nanogpt"][-1] == "1.00x" and rows["default"][rows["variant"].index("window moves by")] == "8"


def test_sample_benchmark_runs_a_rope_model_whose_cache_rolls(tiny_data, tmp_path, capsys):
    run = tmp_path / "rope"
    trained = in_process(capsys, "launch/train.py", *tiny_argv(tiny_data, run, max_iters=2, eval_interval=2,
                                                               pos_emb="rope", norm="rmsnorm", qk_norm=True))
    assert trained.returncode == 0, trained.stderr
    result = in_process(capsys, "launch/bench.py", "sample", f"--out_dir={run}", "--max_new_tokens=24", "--rounds=1",
                        "--variants=nanogpt,default,shift1")
    assert result.returncode == 0, result.stderr
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line}
    window, text = rows["variant"].index("window moves by"), rows["variant"].index("text")
    assert rows["default"][window] == "1 (rolling cache)" and rows["shift1"][window] == "1"
    # shift1 re-reads nanoGPT's cropped windows; the rolled cache keeps what left the window in deeper layers
    assert rows["nanogpt"][text] == rows["shift1"][text]


def test_a_user_error_is_one_paragraph_and_exit_code_2_from_the_real_process(tmp_path):
    # the in-process cases in test_bad_inputs.py cover every message; this one goes through `python launch/train.py`
    result = run_script("launch/train.py", "--dataset=nope", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: dataset 'nope' is not prepared") and result.stderr.count("\n") == 1
    assert "python data/prepare.py --dataset=nope" in result.stderr


def help_blocks(text: str) -> dict[str, str]:
    """--help's text per key: the `--key` line and the lines under it."""
    blocks, key = {}, None
    for line in text.splitlines():
        if line.startswith("  --"):
            key = line.split()[0][2:]
            blocks[key] = line
        elif key is not None:
            blocks[key] += "\n" + line
    return blocks


@pytest.mark.parametrize("script, config", [("launch/train.py", Config), ("launch/sample.py", SampleConfig),
                                            ("data/prepare.py", PrepareConfig)])
def test_help_lists_every_key_with_what_it_does_and_its_default(capsys, script, config):
    with pytest.raises(SystemExit) as exit_:
        run_main(entry(script), ["--help"])
    assert exit_.value.code == 0
    blocks = help_blocks(capsys.readouterr().out)
    specs = field_specs(config)
    assert sorted(blocks) == sorted(specs)
    for key, spec in specs.items():
        assert spec.help in blocks[key] and f"default {spec.default!r}" in blocks[key], blocks[key]


@pytest.mark.parametrize("argv, env, traceback", [
    (["--dataset=nope"], {}, False),
    (["--dataset=nope", "--debug"], {}, True),
    (["--dataset=nope"], {"GPT_DEBUG": "1"}, True),
    (["--dataset=nope"], {"GPT_DEBUG": "0"}, False),
])
def test_debug_or_gpt_debug_shows_the_traceback(tmp_path, monkeypatch, capsys, argv, env, traceback):
    monkeypatch.delenv("GPT_DEBUG", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as exit_:
        run_main(entry("launch/train.py"), [*argv, f"--data_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "dataset 'nope' is not prepared" in err
    assert ("Traceback" in err) == traceback


def test_ctrl_c_outside_a_run_exits_130_without_a_traceback(capsys):
    def main(argv):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_:
        run_main(main, [])
    assert exit_.value.code == 130 and capsys.readouterr().err == "interrupted\n"
