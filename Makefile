# make install | test | wheel | test-wheel | bench | bench-gpu | demo | study | cmake-build. Everything runs
# in .venv, made here, except bench-gpu, which uses the GPU machine's own Python (GPU_PYTHON).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export MAX_JOBS ?= 2
TORCH_PIN := torch==2.14.1
TORCH_PINS := $(TORCH_PIN) torchvision==0.29.1
SOURCES := $(shell find csrc -type f) setup.py pyproject.toml
# The CUDA kernels only where a GPU is visible: a CPU demo never runs them, and they are most of the
# build. INDEED_CUDA=1 builds them anyway (CI, make wheel); see setup.py.
export INDEED_CUDA ?= $(if $(shell nvidia-smi -L 2>/dev/null),auto,0)

.PHONY: install test wheel test-wheel bench bench-gpu demo study cmake-build clean

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel ninja cmake
	$(PY) -m pip install -q $(TORCH_PINS)
	touch $@

# Editable install: builds indeed_ext/_C*.so in place; rebuilt when csrc/ or setup changes.
$(VENV)/.installed: $(VENV)/.torch $(SOURCES)
	$(PY) -m pip install -q --no-build-isolation -e ".[train,test]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q -p no:cacheprovider

# A wheel of the CPU kernels and the CUDA kernels for setup.py's WHEEL_ARCHS (no GPU visible, so that
# setup.py does not build for the visible one alone; TORCH_CUDA_ARCH_LIST overrides), against the venv's
# torch (no build isolation: README, "Install"), with its version's label: dist/indeed_ext-0.1.0+torch2.14cu130-*.whl.
WHEEL_DIR ?= dist
WHEEL_CUDA ?= 1
wheel: $(VENV)/.torch
	CUDA_VISIBLE_DEVICES= INDEED_CUDA=$(WHEEL_CUDA) $(PY) -m pip wheel -q --no-build-isolation --no-deps -w $(WHEEL_DIR) .

# The wheel as users get it: a fresh venv with torch alone (no torchvision, scikit-learn, scipy or
# matplotlib) and pytest, the wheel installed, and the tests of the public API, the ops and a training
# step run against it from a folder outside the checkout (tests/test_packaging.py checks where indeed_ext
# came from and what is installed beside it). Then, where MISMATCH_TORCH is on the local disk, the same
# wheel under that torch: the kernels do not load, the import warns, and a step trains on the reference.
WHEEL_TESTS := packaging reference cpu_ops losses pairs errors model compile aten_counts triton_ops
MISMATCH_TORCH ?= torch==2.13.0+cpu
test-wheel: $(VENV)/.torch
	rm -rf build/wheelhouse
	$(MAKE) wheel WHEEL_DIR=build/wheelhouse
	set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/pip" install -q $(TORCH_PIN) pytest expecttest; \
	"$$tmp/venv/bin/pip" install -q build/wheelhouse/indeed_ext-*.whl; \
	cd "$$tmp"; \
	INDEED_TEST_WHEEL=1 venv/bin/python -m pytest -q -p no:cacheprovider -c "$(CURDIR)/pyproject.toml" \
	  $(WHEEL_TESTS:%="$(CURDIR)/tests/test_%.py"); \
	if venv/bin/pip install -q --no-index "$(MISMATCH_TORCH)"; then \
	  INDEED_TEST_WHEEL=1 INDEED_TEST_MISMATCH=1 venv/bin/python -m pytest -q -p no:cacheprovider \
	    -c "$(CURDIR)/pyproject.toml" "$(CURDIR)/tests/test_packaging.py"; \
	else echo "test-wheel: no $(MISMATCH_TORCH) on the local disk, the real mismatch was not tried"; fi

# Offline demo (indeed_ext/recipes/demo.py): contextual bias on real digits and what INDeeD's co-occurrence pairs
# give back. MNIST's bundled test digits at half size on a 2x2 grid (ml-mnist-mini), 2 per training image, 4,000
# training images, 2 epochs, the paper's CNN: the baseline on uniform label sets (pairs:0) and where digits come in
# partner pairs (pairs:0.9), and INDeeD with --pairs cooccur there; seeds 0-2, 2 cells at a time, CPU. Prints the
# bias and what INDeeD recovers, each with its paired 95 % interval, and each model's audit (indeed-bias); writes
# runs/demo/demo.md and runs/demo/partner_scores.png. Re-running reads the finished cells back (rm -rf runs/demo).
demo: install
	$(PY) -m indeed_ext.recipes.demo --out runs/demo

# The paper's Table 1 grid on ML-MNIST (docs/EXPERIMENTS.md): 4 N x 3 runs x 3 seeds, 3 epochs, CPU.
# Resumable: re-run to continue; finished cells are read back. MNIST: the folder of the IDX files;
# --split-test-set builds train and test digits from the t10k files alone (all that is here).
MNIST ?= ../shared/data/mnist
STUDY_JOBS ?= 2
study: install
	$(VENV)/bin/indeed-study --dataset ml-mnist --root $(MNIST) --split-test-set --train-size 8000 --test-size 2000 \
	  --labels-per-image 2 3 5 7 --runs baseline l2 minmax --seeds 0 1 2 --epochs 3 --device cpu --jobs $(STUDY_JOBS) \
	  --out docs/studies/ml-mnist-3ep

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
