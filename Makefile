# Developer entry points. `make demo` runs the main job, `make test` the whole test suite; each sets
# itself up first (system packages, virtual environment, native build).
PYTHON ?= python3
VENV ?= .venv
PY = $(VENV)/bin/python
STAMP = $(VENV)/.installed

.PHONY: setup system native demo demo-single test test-native test-python bench clean deb rpm lock man

setup: $(STAMP)

system:
	@scripts/bootstrap-system.sh

$(STAMP): pyproject.toml setup.py native/build_native.py $(wildcard native/src/*.c native/include/*.h)
	@scripts/bootstrap-system.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,plot]'
	@touch $@

# Rebuild only the C extension in place after editing native/ (faster than reinstalling).
native: setup
	$(PY) setup.py -q build_ext --inplace

# The demo installs only what it needs (build tools, the runtime dependencies; not the test and packaging
# tools) and says what it is doing. `make demo KEEP=1` leaves both daemons, configs and PKI in place.
DEMO_STAMP = $(VENV)/.installed-demo

$(DEMO_STAMP): pyproject.toml setup.py native/build_native.py $(wildcard native/src/*.c native/include/*.h)
	@echo "[1/3] system packages: build tools and Python headers"
	@scripts/bootstrap-system.sh --runtime
	@echo "[2/3] virtual environment in $(VENV)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@echo "[3/3] qkdd and its dependencies into $(VENV), compiling the native library (a minute or two)"
	@$(PY) -m pip install --progress-bar on -e . | grep -E '^(Collecting|Building|Successfully)' || true
	@$(PY) -c 'import qkdd._native' || { echo "qkdd did not install: run $(PY) -m pip install -e . to see why"; exit 1; }
	@touch $@

demo: $(DEMO_STAMP)
	@$(PY) -m compileall -q qkdd > /dev/null
	$(PY) -m qkdd.link.demo $(if $(KEEP),--keep)

# One daemon with the example configuration: health, links and metrics endpoints.
demo-single: setup
	$(PY) -m qkdd.demo

test-native:
	$(MAKE) -C native test test-asan

# One line per test file with its progress, then the 15 slowest tests.
# The daemons the tests start read qkdd's bytecode compiled here (as an installed package's is at install
# time), not recompile every module at each start where PYTHONDONTWRITEBYTECODE is set: a restarted
# daemon serves about a second sooner.
test-python: setup
	$(PY) -m compileall -q qkdd > /dev/null
	$(PY) -m pytest --durations=15

test: setup test-native test-python

# Distribution packages, built from a clean copy of the source tree in build/ (the tree itself stays
# untouched). Output: build/deb/qkdd_*.deb and build/rpm/RPMS/*/qkdd-*.rpm.
PKG_SOURCE_EXCLUDES = --exclude-vcs --exclude=./.venv --exclude=./build --exclude='*.so' \
	--exclude='__pycache__' --exclude='*.egg-info' --exclude=./native/build --exclude=./.pytest_cache \
	--exclude=./.hypothesis

deb:
	rm -rf build/deb && mkdir -p build/deb/qkdd
	tar -c $(PKG_SOURCE_EXCLUDES) . | tar -x -C build/deb/qkdd
	cp -r packaging/debian build/deb/qkdd/debian
	cd build/deb/qkdd && dpkg-buildpackage --build=binary --no-sign
	lintian --fail-on error,warning build/deb/qkdd_*.changes

# Regenerate qkdd.toml(5) from the example configuration and the bash completions from the command lines
# (tests/test_man_pages.py says when they are stale).
man: setup
	$(PY) packaging/man/qkdd-toml-5.py > packaging/man/qkdd.toml.5
	$(PY) packaging/completion/make-completion.py

# Refresh the hash-pinned dependency locks the packages are built from (packaging/requirements.lock,
# packaging/build-requirements.lock); review the diff and commit both.
lock:
	packaging/lock-requirements.sh

rpm:
	rm -rf build/rpm && mkdir -p build/rpm/SOURCES
	tar -c $(PKG_SOURCE_EXCLUDES) --transform 's,^\.,qkdd,' . | gzip -1 >build/rpm/SOURCES/qkdd.tar.gz
	rpmbuild -bb --nodeps --define "_topdir $(CURDIR)/build/rpm" packaging/rpm/qkdd.spec

clean:
	rm -rf $(VENV) build native/build qkdd/_native*.so *.egg-info
