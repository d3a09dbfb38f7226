"""Memory does not grow with the corpus: preparing it, and drawing batches from it (README, "Large corpora")."""
import gc
import subprocess
import sys

from benchmarks.loader import rss_mb, write_corpus
from data.dataset import open_dataset
from data.loader import BatchLoader
from tests.conftest import REPO, TINY_TEXT, script_env

MB = 1 << 20


def prepare_peak_mb(text_path, data_dir) -> float:
    """Peak resident memory of `python data/prepare.py` (one process, char tokenizer) over a text file."""
    code = ("import resource, sys; from data.prepare import main; from gpt.cli import run_main; "
            "run_main(main, sys.argv[1:]); print('peak', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    result = subprocess.run([sys.executable, "-c", code, "--dataset=big", f"--input={text_path}", f"--data_dir={data_dir}",
                             "--workers=1"], cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return float(result.stdout.rsplit("peak", 1)[1])


def test_preparing_a_ten_times_larger_corpus_takes_no_more_memory(tmp_path):
    chunk = TINY_TEXT * 100  # 3.5 MB
    sizes = {}
    for copies in (1, 10):
        text = tmp_path / f"corpus{copies}.txt"
        with open(text, "w") as f:
            for _ in range(copies):
                f.write(chunk)
        sizes[copies] = (text.stat().st_size / MB, prepare_peak_mb(text, tmp_path / f"data{copies}"))
    (small, small_peak), (large, large_peak) = sizes[1], sizes[10]
    # measured: +0-3 MB for +31 MB of text; reading the corpus whole would add at least its size
    assert large_peak - small_peak < 0.2 * (large - small), sizes


def rss_growth_while_drawing(root, windows: int = 2048) -> float:
    """MB of resident memory gained while a loader draws `windows` random windows from dataset `synthetic`."""
    gc.collect()
    before = rss_mb()
    loader = BatchLoader(open_dataset(root, "synthetic"), block_size=256, batch_size=16, gradient_accumulation_steps=1,
                         seed=0)
    try:
        for _ in range(windows // 16):
            loader.next_batch()
        return rss_mb() - before
    finally:
        loader.close()


def test_drawing_batches_from_a_25_times_larger_corpus_takes_no_more_memory(tmp_path):
    # random windows touch ~2,000 places: without handing pages back, the whole large shard would stay resident
    small, large = tmp_path / "small", tmp_path / "large"
    write_corpus(small, 0.004, shard_tokens=1 << 21)  # 4 MB
    write_corpus(large, 0.1, shard_tokens=1 << 25)  # 100 MB
    grown = {"small": rss_growth_while_drawing(small), "large": rss_growth_while_drawing(large)}
    assert grown["large"] - grown["small"] < 0.1 * (100 - 4), grown
