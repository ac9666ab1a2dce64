# GreenMIM developer entry points. `make setup` is idempotent (see scripts/setup.sh), so the
# other targets depend on it and cost a few seconds once the venv is in place.
PY := .venv/bin/python

.PHONY: setup test check-package demo demo-compare demo-classify

setup:
	@bash scripts/setup.sh

test: setup
	$(PY) -m pytest -q tests

# The wheel as users get it (`pip install .`, no -e) in a clean venv: imports, console scripts,
# declared dependencies. CI runs it after `test`.
check-package: setup
	@bash scripts/check_package.sh

# Main job on the embedded default data.
demo: setup
	@if [ -f tools/demo.py ]; then $(PY) tools/demo.py; else echo "demo not yet built"; fi

# The demo plus the same fine-tuning from random init: what pretraining buys (reuses finished stages).
demo-compare: setup
	$(PY) tools/demo.py --compare

# Classification on the demo's shapes: tiny_cpu fine-tuning from random init vs a green-pretrained
# encoder, 100% and 10% of the labels (pretrains one first; ENCODER=path reuses one).
demo-classify: setup
	$(PY) tools/demo_classify.py --out output/demo_classify $(if $(ENCODER),--encoder $(ENCODER),)
