# dashcam-manager — build, test, demo.
#   make test       every test (unit, integration, system tests in a VM), installing what is missing
#   make test-fast  unit and integration tests only
#   make lint       static checks
#   make deb        ../dashcam-manager_<version>_all.deb -> dist/
#   make demo       the whole job in a VM: camera full of footage -> staging -> home server

PYTHON := /usr/bin/python3
VERSION := $(shell dpkg-parsechangelog -S Version 2>/dev/null || sed -n '1s/.*(\(.*\)).*/\1/p' debian/changelog)
DEB := dist/dashcam-manager_$(VERSION)_all.deb
PYTEST := $(PYTHON) -m pytest -p no:cacheprovider

# Debian packages the build, the tests and the VM need (installed by `make deps` when missing)
DEPS := debhelper dh-python python3-all python3-setuptools python3-yaml python3-pyudev \
	python3-pytest python3-hypothesis python3-pyflakes python3-debian lintian fakeroot rsync openssh-client \
	openssh-server uhubctl sqlite3 udev systemd mtools dosfstools e2fsprogs \
	qemu-system-x86 qemu-utils debootstrap mosquitto python3-paho-mqtt \
	debian-archive-keyring

.PHONY: all deps test test-fast test-system test-quarantined lint deb demo clean vm-image

all: deb

deps:
	@missing=$$(for p in $(DEPS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		if [ "$$(id -u)" != 0 ]; then echo "make deps: run as root to install: $$missing" >&2; exit 1; fi; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

lint: deps
	$(PYTHON) -m pyflakes $(wildcard src tests bench)
	PYTHONPATH=src $(PYTHON) -m dashcam_helpers --help >/dev/null
	@# the project never turns off host key checking, not even in a test
	@! grep -rn 'StrictHostKeyChecking=no' $(wildcard src systemd udev debian etc bench tests README.md ARCHITECTURE.md)

test-fast: deps lint
	PYTHONPATH=src $(PYTEST) -m "not system" tests

test-system: deps deb
	PYTHONPATH=src $(PYTEST) -m "system and not quarantined" tests

# system tests that do not pass yet (see tests/system/README.md): run them to work on them
test-quarantined: deps deb
	PYTHONPATH=src $(PYTEST) -m quarantined tests

test: deps lint deb
	PYTHONPATH=src $(PYTEST) -m "not quarantined" tests

deb: deps
	rm -rf dist && mkdir -p dist
	dpkg-buildpackage -b -us -uc -rfakeroot --build-profiles=nocheck >dist/build.log 2>&1 || { tail -40 dist/build.log; exit 1; }
	mv ../dashcam-manager_$(VERSION)_*.deb ../dashcam-manager_$(VERSION)_*.buildinfo ../dashcam-manager_$(VERSION)_*.changes dist/
	lintian --fail-on error,warning --suppress-tags newer-standards-version $(DEB)
	@echo "built $(DEB)"

# the system tests' guest images (Debian 12 and 13), cached in /var/cache/dashcam-vm (built on first use anyway)
vm-image: deps
	$(PYTHON) tests/system/image.py bookworm
	$(PYTHON) tests/system/image.py trixie

demo: deps deb
	@if [ -x tests/system/demo.py ]; then $(PYTHON) tests/system/demo.py $(DEB); \
	else echo "make demo arrives with the VM system tests (tests/system); the package is built: $(DEB)"; fi

clean:
	rm -rf dist build .pybuild debian/.debhelper debian/dashcam-manager debian/files debian/*.substvars debian/*.log debian/debhelper-build-stamp
	find . -name __pycache__ -prune -exec rm -rf {} +
