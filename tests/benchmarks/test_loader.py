"""The loader benchmark runs end to end on a tiny corpus and cleans up after itself."""
from benchmarks.loader import main


def test_loader_bench_smoke(tmp_path, capsys):
    main(["--sizes_gb=0.004", "--seconds=0.3", "--sampling=sequential", "--shard_tokens=500000",
          "--ranks=2", "--block_size=64", f"--tmp_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert "2,000,000 train tokens" in out and "4 shards, opened in" in out and "with 0 maps" in out
    assert "M tokens/s" in out and "RSS peak" in out
    assert list(tmp_path.iterdir()) == []  # the synthetic shards are deleted
