"""Config files and --key=value flags: types, defaults, and the errors users see."""
import pytest

from gpt.config import Config, config_from_dict, load_config
from gpt.errors import GPTError


def write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_no_arguments_means_the_shakespeare_char_config():
    cfg = load_config([])
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, cfg.model.block_size) == (6, 6, 384, 256)
    assert (cfg.data.batch_size, cfg.train.dropout, cfg.optim.learning_rate) == (64, 0.2, 1e-3)
    assert (cfg.train.max_iters, cfg.optim.lr_decay_iters, cfg.optim.min_lr, cfg.optim.beta2) == (5000, 5000, 1e-4, 0.99)
    assert (cfg.optim.warmup_iters, cfg.train.eval_interval, cfg.train.eval_iters) == (100, 250, 200)
    assert (cfg.train.log_interval, cfg.train.out_dir) == (10, "out-shakespeare-char")


def test_cpu_config_has_nanogpt_laptop_settings():
    cfg = load_config(["configs/shakespeare_char_cpu.yaml"])
    assert (cfg.model.block_size, cfg.data.batch_size, cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd) == (64, 12, 4, 4, 128)
    assert (cfg.train.dropout, cfg.train.max_iters, cfg.optim.lr_decay_iters, cfg.train.eval_iters) == (0.0, 2000, 2000, 20)


def test_flags_override_the_file_with_typed_values(tmp_path):
    cfg = load_config([write(tmp_path, "n_layer: 3\nbias: true\n"), "--n_layer=5", "--bias=False",
                       "--learning_rate=3e-4", "--max_iters=1e3", "--out_dir=x", "--compile=True"])
    assert cfg.model.n_layer == 5 and cfg.model.bias is False
    assert cfg.optim.learning_rate == 3e-4 and cfg.train.max_iters == 1000
    assert cfg.train.out_dir == "x" and cfg.train.compile is True


def test_every_nanogpt_flag_is_accepted():
    flags = ("out_dir eval_interval eval_iters log_interval dataset batch_size block_size n_layer n_head n_embd "
             "dropout bias learning_rate max_iters lr_decay_iters min_lr warmup_iters weight_decay beta1 beta2 "
             "grad_clip gradient_accumulation_steps always_save_checkpoint init_from compile dtype device seed "
             "wandb_log wandb_project wandb_run_name data_dir").split()
    keys = Config().to_dict()
    assert not [f for f in flags if f not in keys]


def test_flat_dict_round_trips():
    cfg = load_config(["--n_layer=2"])
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("argv, words", [
    (["--n_layr=4"], ["unknown config key 'n_layr'", "n_layer"]),
    (["--learnin_rate=1"], ["learning_rate"]),
    (["--n_layer=four"], ["--n_layer=four", "integer"]),
    (["--n_layer=2.5"], ["integer"]),
    (["--bias=maybe"], ["True or False"]),
    (["--dropout=x"], ["number"]),
    (["--block_size=0"], ["block_size", "at least 1"]),
    (["--n_embd=100", "--n_head=3"], ["not divisible", "n_head"]),
    (["--learning_rate=-1"], ["learning_rate", "negative"]),
    (["--device=tpu"], ["--device='tpu'", "cuda:N"]),
    (["--dtype=float8"], ["dtype", "bfloat16"]),
    (["--init_from=gpt3"], ["--init_from='gpt3'", "scratch", "gpt2-xl", "folder"]),
    (["--tokens_per_step=1000", "--batch_size=4", "--block_size=512"], ["less than one micro-batch", "2048"]),
    (["--hellaswag_limit=-1"], ["hellaswag_limit"]),
    (["--dropout=1.5"], ["dropout"]),
    (["--n_layer"], ["no value", "--n_layer=VALUE"]),
    (["configs/missing.yaml"], ["does not exist"]),
    (["a.yaml", "b.yaml"], ["at most one config file"]),
])
def test_bad_flags_are_explained(argv, words):
    with pytest.raises(GPTError) as err:
        load_config(argv)
    for word in words:
        assert word in str(err.value)


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "n_layer: 2\nn_head: [4\nn_embd: 8\n")
    with pytest.raises(GPTError, match=r"c\.yaml: YAML syntax error at line \d+"):
        load_config([path])


@pytest.mark.parametrize("text, words", [
    ("n_layers: 2\n", ["unknown config key 'n_layers'", "in ", "n_layer"]),
    ("n_layer: two\n", ["'n_layer' must be an integer"]),
    ("bias: 1\n", ["'bias' must be True or False"]),
    ("model:\n  n_layer: 2\n", ["unknown config key 'model'"]),
    ("- 1\n- 2\n", ["mapping"]),
])
def test_bad_yaml_values_are_explained(tmp_path, text, words):
    with pytest.raises(GPTError) as err:
        load_config([write(tmp_path, text)])
    for word in words:
        assert word in str(err.value)


def test_integers_in_yaml_are_accepted_as_floats(tmp_path):
    assert load_config([write(tmp_path, "learning_rate: 1\n")]).optim.learning_rate == 1.0


def test_every_key_of_every_entry_point_has_a_description_in_help(capsys):
    from benchmarks.gpu_check import GpuCheckConfig
    from benchmarks.kernels import KernelBenchConfig
    from benchmarks.loader import LoaderBenchConfig
    from benchmarks.train import TrainBenchConfig
    from data.prepare import PrepareConfig
    from gpt.flags import field_specs, help_text
    from launch.export_checkpoint import ExportConfig
    from launch.sample import SampleConfig

    for cls in (Config, SampleConfig, PrepareConfig, ExportConfig, TrainBenchConfig, KernelBenchConfig,
                LoaderBenchConfig, GpuCheckConfig):
        specs = field_specs(cls)
        assert not [k for k, s in specs.items() if len(s.help) < 10], cls.__name__
        text = help_text(cls, "usage")
        assert all(f"--{k} " in text and s.help in text for k, s in specs.items())
    with pytest.raises(SystemExit) as exit_:
        load_config(["--help"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    assert "--learning_rate" in printed and "peak learning rate" in printed and "default 0.0006" in printed
