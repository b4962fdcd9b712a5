# dinov2-eqcoh: every target does its own set-up on a fresh machine.
#   make test      venv + dependencies + patched DINOv2, then the test suite (CPU, ~12 min on 2 cores)
#   make demo      the main job: three models on the built-in dataset, probes, report in out/demo/
#   make study     training seeds x models with paired 95 % intervals (dinov2_eqcoh.experiments.study), out/study/
#   make dinov2    (re)install DINOv2 at the pin with patches/ applied; DINOV2_SRC=<git URL or local clone>
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PIP := $(PYTHON) -m pip
PIN := $(shell sed -n 's/^commit=//p' patches/UPSTREAM)
DEMO_OUT ?= out/demo
STUDY_OUT ?= out/study
STUDY_ARGS ?=
# the learned-invariance regime (docs/invariance_regime.md): vanilla DINOv2's DINO term stays <= 0.8 ln K over the last quarter
LEARNED_OPTS := teacher.teacher_temp=0.01 teacher.warmup_teacher_temp=0.01
PYTEST_ARGS ?=

.PHONY: venv dinov2 test demo demo-regime study study-learned study-regime study-regime-fill-free results-headline lint bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# Re-run the installer when the pin or the patches change, or when DINOV2_SRC is given explicitly.
build/dinov2.stamp: $(VENV)/.installed patches/UPSTREAM patches/series $(wildcard patches/*.patch) patches/install_dinov2.sh patches/apply.sh
	PYTHON=$(PYTHON) patches/install_dinov2.sh

dinov2: $(VENV)/.installed
	PYTHON=$(PYTHON) patches/install_dinov2.sh

test: build/dinov2.stamp
	$(PYTHON) -m pytest $(PYTEST_ARGS)

demo: build/dinov2.stamp
	$(PYTHON) -m dinov2_eqcoh.experiments.demo --output-dir $(DEMO_OUT)

# the three models where the decoders act (docs/mechanism_regime.md): 800 iterations each, 41.7 min on 2 cores
# (docs/demo_regime/report.md); make demo stays the quick pipeline check (13.6 min) where they do not act yet
demo-regime: build/dinov2.stamp
	$(PYTHON) -m dinov2_eqcoh.experiments.demo --preset regime --output-dir out/demo_regime

study: build/dinov2.stamp
	$(PYTHON) -m dinov2_eqcoh.experiments.study --output-dir $(STUDY_OUT) $(STUDY_ARGS)

study-learned: build/dinov2.stamp
	$(PYTHON) -m dinov2_eqcoh.experiments.study --output-dir out/study_learned --title "learned-invariance regime" $(STUDY_ARGS) $(LEARNED_OPTS)

# the study where the decoders act (docs/mechanism_regime.md): 800 iterations, five models, 3 seeds
# (about 4 h on 2 cores: 30 min for the first run and its references, 229 min estimated for the rest; resumable:
# rerun the same command)
REGIME_OPTS := eqcoh.decoder.dim=256 eqcoh.extra_unmasked_pass=true
study-regime: build/dinov2.stamp
	$(PYTHON) -m dinov2_eqcoh.experiments.study --output-dir out/study_regime --title "mechanism regime (800 iterations)" \
		--models dinov2,dinov2_aug,eqcoh,eqcoh_k1,eqcoh_head_only --budget 4 $(STUDY_ARGS) $(REGIME_OPTS)

# does fill-free geometry change any probe? The regime study plus DINOv2 + g and EqCoh trained with
# eqcoh.fill_free=true, paired by seed with their filled twins (same folder; about 30 min more per seed: the regime
# study's dinov2_aug trained in 9 min, its eqcoh in 16 min on a quiet machine)
study-regime-fill-free: build/dinov2.stamp
	$(PYTHON) -m dinov2_eqcoh.experiments.study --output-dir out/study_regime --title "mechanism regime (800 iterations)" \
		--models dinov2,dinov2_aug,eqcoh,eqcoh_k1,eqcoh_head_only,dinov2_aug_fill_free,eqcoh_fill_free --budget 4 \
		$(STUDY_ARGS) $(REGIME_OPTS)

# docs/results.md's headline block (between its study-regime markers) from the regime study's committed report.
results-headline: $(VENV)/.installed
	$(PYTHON) -m dinov2_eqcoh.experiments.headline --study docs/study/regime/study.md --into docs/results.md

bench: build/dinov2.stamp
	$(PYTHON) -m dinov2_eqcoh.experiments.bench

lint: $(VENV)/.installed
	$(PYTHON) -m ruff check dinov2_eqcoh tests

clean:
	rm -rf build out .pytest_cache
