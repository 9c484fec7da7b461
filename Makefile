.PHONY: simulator

# Builds the precheck simulator image used by the tests (precheck-simulator:latest).
simulator:
	bash simulator/build.sh

.PHONY: demo
# Serves Precheck on the simulator with sample layouts: see scripts/demo.
demo:
	bash scripts/demo
