# The two commands of the README: `make test` and `make demo`. Both run `make setup` first,
# which is idempotent (a cached setup takes seconds). The CUDA build lives beside it in
# .venv-cuda: `make setup-cuda`, `make test-cuda`, and `make gpu-check` on a GPU machine.
PY := ./.venv/bin/python
PY_CUDA := ./.venv-cuda/bin/python
PYTEST_ARGS ?=

.PHONY: setup setup-cuda test test-cuda demo reproduce prototxt bench bench-conv gpu-check gpu-bundle clean-build help

help:
	@echo "make setup      install Debian packages, build Caffe + pycaffe (cached), create .venv"
	@echo "make test       setup, then the whole test suite"
	@echo "make demo       setup, then the offline FashionNet demo (defense_example.py)"
	@echo "make reproduce  setup, then the Fashion-MNIST reproduction into results/fashion/"
	@echo "make prototxt   regenerate the committed prototxts under prototxt/"
	@echo "make bench      CPU benchmarks (deploy layouts, batched UAP)"
	@echo "make bench-conv Caffe's batched convolution on/off, onnxruntime, training step, UAP pass (results/bench/)"
	@echo "make setup-cuda Caffe with CUDA 13.0 from PyPI's toolchain into .venv-cuda (CAFFE_CUDA_ARCH=...)"
	@echo "make test-cuda  setup-cuda, then the whole test suite against .venv-cuda (GPU tests need a GPU)"
	@echo "make gpu-check  on a GPU machine: GPU tests + GPU benchmark into gpu-check.json"
	@echo "make gpu-bundle pack what gpu-check needs on a GPU machine without Debian or network"

setup:
	bash caffe_build/setup.sh

setup-cuda:
	CAFFE_CUDA=pip bash caffe_build/setup.sh

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-cuda: setup-cuda
	$(PY_CUDA) -m pytest $(PYTEST_ARGS)

demo: setup
	$(PY) defense_example.py --dnn FashionNet --attack UAP --defense True --out demo.png

reproduce: setup
	$(PY) -m defense.reproduce --out results/fashion

prototxt: setup
	$(PY) -m defense.generate --all

bench: setup
	$(PY) -m defense.bench
	$(PY) -m attacks.bench

# on an idle machine: regenerates results/bench/conv_batching*.json and prints the tables of docs/benchmarks.md
bench-conv: setup
	$(PY) -m defense.bench --compare conv-batching --nets FashionNet,CaffeNet --reps 11
	$(PY) -m defense.bench --compare conv-batching --nets VGG16 --kinds forward,train --reps 7 \
		--out results/bench/conv_batching_vgg16.json

gpu-check:
	bash caffe_build/gpu-check.sh

gpu-bundle: setup-cuda
	bash caffe_build/gpu-bundle.sh

clean-build:
	rm -rf .venv .venv-cuda
