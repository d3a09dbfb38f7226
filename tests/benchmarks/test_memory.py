"""bench memory: one step's peak memory with and without activation checkpointing, same losses, table last."""
import benchmarks.memory as bench
from tests.conftest import tiny_argv


def test_checkpointing_lowers_a_steps_peak_and_keeps_its_loss(tiny_data, tmp_path, capsys):
    # activations dominate at this shape (blocks of 8 x 64 x 64), as they do at GPT-2's
    bench.main(tiny_argv(tiny_data, tmp_path, n_layer=2, n_embd=64, block_size=64, batch_size=8, dropout=0.1,
                         vocab_size=None)  # not gpt2_124m.yaml's 50304: the data's 45
               + ["--synthetic=False"])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-4].startswith("| variant | activation checkpointing | peak MiB in a step")
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in out[-2:]]
    assert [r[:2] for r in rows] == [["fused", "no"], ["fused+ckpt", "yes"]]
    peaks = [float(r[2].replace(",", "")) for r in rows]
    assert peaks[1] < 0.8 * peaks[0], peaks
    assert rows[0][-1] == rows[1][-1]  # the same loss: checkpointing recomputes, dropout masks included
    assert "2 layers x 2 heads x 64 wide, block 64, vocab 45" in "\n".join(out)
