# The two commands of the README: `make test` and `make demo`. Both run `make setup` first,
# which is idempotent (a cached setup takes seconds).
PY := ./.venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup test demo reproduce prototxt bench clean-build help

help:
	@echo "make setup      install Debian packages, build Caffe + pycaffe (cached), create .venv"
	@echo "make test       setup, then the whole test suite"
	@echo "make demo       setup, then the offline FashionNet demo (defense_example.py)"
	@echo "make reproduce  setup, then the Fashion-MNIST reproduction into results/fashion/"
	@echo "make prototxt   regenerate the committed prototxts under prototxt/"
	@echo "make bench      CPU benchmarks (deploy layouts, batched UAP)"
	@echo "CUDA build:     CAFFE_CUDA=on make setup"

setup:
	bash caffe_build/setup.sh

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup
	$(PY) defense_example.py --dnn FashionNet --attack UAP --defense True --out demo.png

reproduce: setup
	$(PY) -m defense.reproduce --out results/fashion

prototxt: setup
	$(PY) -m defense.generate --all

bench: setup
	$(PY) -m defense.bench
	$(PY) -m attacks.bench

clean-build:
	rm -rf .venv
