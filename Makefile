.PHONY: simulator

# Builds the precheck simulator image used by the tests (precheck-simulator:latest).
simulator:
	bash simulator/build.sh
