# Every target runs inside .venv, which `setup` creates from pyproject.toml.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# make sim runs the full simulator campaign; make test runs a bounded slice of it
SEEDS  ?= 10000
SIM_SEEDS ?= 2000

.PHONY: setup system-packages demo test test-long lint sim campaign fuzz bench clean

# Debian packages the lab tests need (network namespaces with sshd, nftables), and
# prometheus (prometheus and promtool for the monitoring tests: tests/unit/test_alert_rules.py,
# tests/integration/test_monitoring.py). Only the binaries are wanted: the package's
# Prometheus service is neither started (a policy-rc.d for the install, unless the machine
# has its own) nor enabled.
SYSTEM_PACKAGES := openssh-server nftables iproute2 iputils-ping systemd-container sudo prometheus
NO_START_SERVICES := prometheus prometheus.service

setup: system-packages $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,ops,bench]'
	@touch $@

# Installs only what is missing, and only as root; others get a note and the
# lab tests skip themselves, saying why.
system-packages:
	@if [ "$$(id -u)" != 0 ]; then \
	  echo "setup: not root, not installing Debian packages ($(SYSTEM_PACKAGES))"; \
	else \
	  missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    echo "setup: installing $$missing"; \
	    rcd=; if [ ! -e /usr/sbin/policy-rc.d ]; then \
	      rcd=/usr/sbin/policy-rc.d; \
	      printf '#!/bin/sh\ncase "$$1" in %s) exit 101;; esac\nexit 0\n' \
	        "$$(echo $(NO_START_SERVICES) | tr ' ' '|')" > $$rcd; chmod 755 $$rcd; \
	    fi; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends $$missing >/dev/null; rc=$$?; \
	    if [ -n "$$rcd" ]; then rm -f $$rcd; fi; \
	    case " $$(echo $$missing) " in *" prometheus "*) \
	      systemctl disable --quiet prometheus.service 2>/dev/null; \
	      if [ -d /run/systemd/system ]; then systemctl stop prometheus.service; fi;; \
	    esac; \
	    exit $$rc; \
	  fi; \
	fi

# 8 brokers in two regions on loopback, deployed with ansible-playbook (a private copy of
# inventories/local): write load, kill -9 region1, failover, failback, read everything back,
# clean up. No root; ~2 minutes. Options: make demo DEMO_ARGS="--help"
DEMO_ARGS ?=
demo: setup
	$(PY) -m broker.demo $(DEMO_ARGS)

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: setup lint
	$(PY) -m pytest -n 2 --dist loadgroup -q tests
	$(PY) -m tests.sim.run --seeds $(SIM_SEEDS) --jobs 2

# The lab tests that take minutes each (as root): the role converged on systemd lab hosts as
# deploy with become, the molecule systemd scenario, fab stop/start-region, rolling restart,
# rotate-certs under load and the drill on systemd hosts; scale.yml 4 -> 8 -> 4 lab hosts and
# upgrade.yml with a rollback on the 8-host lab, under load; an 8-broker local TLS cluster whose CA
# is rotated. make test runs a bounded slice of each.
test-long: setup
	BROKER_LONG_TESTS=1 $(PY) -m pytest -q -p no:xdist \
	  tests/lab/test_lab_systemd.py tests/lab/test_lab_ops_systemd.py tests/lab/test_lab_scale.py \
	  tests/lab/test_lab_upgrade.py \
	  "tests/ansible/test_molecule.py::test_molecule_scenario_passes[systemd]" \
	  tests/ansible/test_tls_role.py::test_tls_cluster_deploys_and_rotates_its_ca

sim: setup
	$(PY) -m tests.sim.run --seeds $(SEEDS) --jobs 2

# The fault campaign (tests/campaign): fresh dual-region clusters of real brokers, client
# threads on a few keys and on the record log, a nemesis drawn from each seed (kill -9, pauses,
# leader kills, whole-cluster restarts, region loss with failover and failback; as root also
# inter-region cuts both ways and one way in the lab, and a full disk), every history checked
# for linearizability, lost and duplicated records. make test runs a bounded slice (three
# schedules). make campaign SECONDS=60 SEEDS=50 runs 50 schedules of 60 s each;
# CAMPAIGN_ARGS="--help" lists the rest (mix, shape, replaying one seed).
CAMPAIGN_SECONDS ?= 30
CAMPAIGN_SEEDS ?= 10
CAMPAIGN_ARGS ?=
campaign: setup
	$(PY) -m tests.campaign \
	  --seconds $(if $(filter command line environment,$(origin SECONDS)),$(SECONDS),$(CAMPAIGN_SECONDS)) \
	  --schedules $(if $(filter command line environment,$(origin SEEDS)),$(SEEDS),$(CAMPAIGN_SEEDS)) \
	  $(CAMPAIGN_ARGS)

# Hypothesis against the frame decoder, the Raft message decoder and gateway requests:
# make test runs 200 examples of each, this 20,000 (about 18 minutes).
fuzz: setup
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q tests/fuzz

bench: setup
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
