# make install | test | bench | bench-gpu | demo | cmake-build. Everything runs in .venv, made here,
# except bench-gpu, which uses the GPU machine's own Python (GPU_PYTHON).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export MAX_JOBS ?= 2
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
SOURCES := $(shell find csrc -type f) setup.py pyproject.toml

.PHONY: install test bench bench-gpu demo cmake-build clean

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel ninja cmake
	$(PY) -m pip install -q $(TORCH_PINS)
	touch $@

# Editable install: builds indeed_ext/_C*.so in place; rebuilt when csrc/ or setup changes.
$(VENV)/.installed: $(VENV)/.torch $(SOURCES)
	$(PY) -m pip install -q --no-build-isolation -e ".[test]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q -p no:cacheprovider

# Offline demo: Baseline vs INDeeD (min-max) on ml-digits (scikit-learn's bundled 8x8 digits,
# 3 per 24x24 canvas), simple CNN, CPU; prints the per-class AP table (also in runs/demo/).
demo: install
	$(PY) -m indeed_ext.train --dataset ml-digits --labels-per-image 3 --method both --norm minmax \
	  --backbone simple-cnn --epochs 5 --train-size 8000 --test-size 2000 --seed 0 --device cpu --out runs/demo

# Timings of every op on the CPU backends, small sizes (benchmarks/bench_ops.py --preset small,
# under 5 minutes on 2 cores): benchmarks/results/ops_cpu.{md,csv,json} and one plot per op; then
# the host overhead of a step's loss and mine_pairs (benchmarks/bench_host.py, under a minute):
# benchmarks/results/host_cpu.{md,json}.
bench: install
	$(PY) benchmarks/bench_ops.py --device cpu --preset small --out benchmarks/results
	$(PY) benchmarks/bench_host.py --out benchmarks/results

# The full matrix on a CUDA GPU (under 8 minutes on an H100): builds the CUDA kernels in place with
# the Python that has torch and triton there, then benchmarks/results/ops_cuda.*.
GPU_PYTHON ?= python3
bench-gpu:
	INDEED_CUDA=1 MAX_JOBS=$$(nproc) $(GPU_PYTHON) setup.py build_ext --inplace
	$(GPU_PYTHON) benchmarks/bench_ops.py --device cuda --preset full --profile --out benchmarks/results

clean:
	rm -rf build indeed_ext/*.so $(VENV)/.installed

# The CMake build of the same library (libtorch users); CI builds it once.
cmake-build: $(VENV)/.torch
	$(VENV)/bin/cmake -S . -B build/cmake -G Ninja \
	  -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
	  $$($(PY) tools/cuda_env.py)
	$(VENV)/bin/cmake --build build/cmake
	$(PY) -c "import torch; torch.ops.load_library('build/cmake/libindeed_ops.so'); \
	  print('cmake build registers', torch.ops.indeed.decompose.default._schema)"
