# Two commands on a fresh clone:  `make demo`  and  `make test`.  Both create or refresh .venv first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
# CPU torch by exact pin: a bare `pip install torch` resolves to a multi-GB CUDA build. On a GPU machine use
#   make install TORCH_PINS="torch==2.14.1 torchvision==0.29.1"   (or the CUDA wheels your driver supports)
TORCH_PINS ?= torch==2.13.0 torchvision==0.28.0
# basicsr and pyiqa declare tb-nightly, a second OpenCV and transformers; their imports need none of them.
REFERENCE_PINS := basicsr==1.4.2 pyiqa==0.1.16
STAMP  := $(VENV)/.installed
DEMO_OUT ?= demo-out

.PHONY: install data test demo lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m pip install -q --no-deps $(REFERENCE_PINS)
	$(BIN)/python -c "import cascadevsr, basicsr, pyiqa, torchvision; print('cascadevsr', cascadevsr.__version__, 'installed')"
	touch $(STAMP)

install: $(STAMP)

data: install
	$(BIN)/cascadevsr fetch-data

test: data
	$(BIN)/python -m pytest

demo: data
	$(BIN)/cascadevsr demo --out $(DEMO_OUT)

lint: install
	$(BIN)/ruff check .

BENCH ?= --all --quick

bench: data
	$(BIN)/cascadevsr bench $(BENCH) --out bench.jsonl

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
