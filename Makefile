# Two commands from a fresh machine: `make demo` and `make test`.
# Both create .venv (Python 3.11, required by onnxruntime-training) and install the project on first use.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_ARGS ?=
QUALITY_ARGS ?=
PYTEST_ARGS ?=

.PHONY: demo test test-slow runner runner-arm64 lint bench-train-step bench-train-throughput bench-adapter-overhead bench-schedule-overhead bench-ondevice-train bench-deploy bench-quant-agreement bench-coreml-sizes bench-native-runner bench-quality bench-quality-quick clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and exactly: the pinned CPU wheel, never a CUDA build pulled in by a dependency.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

demo: runner
	$(BIN)/mobilepeft demo --runner build/runner/mobilepeft_runner $(DEMO_ARGS)

test: $(STAMP)
	@command -v kotlinc >/dev/null 2>&1 || echo "NOTE: kotlinc not found: the Android core's Kotlin tests (android_demo/app/core) are SKIPPED; apt-get install kotlin"
	# Two workers, one test file each at a time (module fixtures such as exported bundles are built once).
	$(BIN)/python -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS)

# The slow tests (a >2 GB ONNX Runtime training bundle: ~5 min and ~15 GiB on 2 cores; the runner on aarch64
# under qemu: ~3 min); CI runs them.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

# The native runner (runner/) against the installed executorch wheel: build/runner/mobilepeft_runner.
runner: $(STAMP)
	$(BIN)/cmake -S runner -B build/runner -G Ninja -DCMAKE_MAKE_PROGRAM=$(abspath $(BIN)/ninja) \
	    -DCMAKE_PREFIX_PATH=$$($(BIN)/python -c "import executorch; print(list(executorch.__path__)[0])")
	$(BIN)/cmake --build build/runner -j2

# The native runner cross-compiled for aarch64 Linux (Debian: apt-get install g++-aarch64-linux-gnu), against
# the aarch64 wheel of the same executorch release: build/runner-arm64/mobilepeft_runner. Run it with
# qemu-user (QEMU_LD_PREFIX=/usr/aarch64-linux-gnu qemu-aarch64 ...); tests/test_runner_arm64.py does.
runner-arm64: $(STAMP)
	@command -v aarch64-linux-gnu-g++ >/dev/null 2>&1 || { echo "error: aarch64-linux-gnu-g++ not found: apt-get install g++-aarch64-linux-gnu"; exit 1; }
	$(BIN)/python runner/arm64_runtime.py build/arm64
	$(BIN)/cmake -S runner -B build/runner-arm64 -G Ninja -DCMAKE_MAKE_PROGRAM=$(abspath $(BIN)/ninja) \
	    -DCMAKE_TOOLCHAIN_FILE=$(abspath runner/cmake/aarch64-linux-gnu.cmake) -DCMAKE_PREFIX_PATH=$(abspath build/arm64/executorch)
	$(BIN)/cmake --build build/runner-arm64 -j2

lint: $(STAMP)
	$(BIN)/ruff check mobilepeft tests benchmarks

bench-train-step: $(STAMP)
	$(BIN)/python benchmarks/train_step.py

bench-train-throughput: $(STAMP)
	$(BIN)/python benchmarks/train_throughput.py

bench-adapter-overhead: $(STAMP)
	$(BIN)/python benchmarks/adapter_overhead.py

bench-schedule-overhead: $(STAMP)
	$(BIN)/python benchmarks/schedule_overhead.py

bench-ondevice-train: $(STAMP)
	$(BIN)/python benchmarks/ondevice_train.py

bench-deploy: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[peers]"
	$(BIN)/python benchmarks/deploy_bench.py

bench-quant-agreement: $(STAMP)
	$(BIN)/python benchmarks/quant_agreement.py

bench-coreml-sizes: $(STAMP)
	$(BIN)/python benchmarks/coreml_sizes.py

bench-native-runner: runner
	$(BIN)/python benchmarks/native_runner.py

# Every adapter method at one budget, 3 seeds, 2 tasks: docs/results.md (~40 min on 2 cores; cached runs are reused).
bench-quality: $(STAMP)
	$(BIN)/python -m benchmarks.quality.run $(QUALITY_ARGS)

# LoRA, HyDRA and hierarchical-only on every task with the full protocol: under an hour on 2 cores.
bench-quality-quick: $(STAMP)
	$(BIN)/python -m benchmarks.quality.run --quick $(QUALITY_ARGS)

clean:
	rm -rf outputs runs build .pytest_cache
