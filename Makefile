# dpolua: the two commands a newcomer needs, and a few more.
#   make run              install packages, build, run the main recipe
#                         (RUN_ARGS, default --overwrite: options for the recipe)
#   make test             build, then run every C test and Busted spec (ctest)
#   make test SANITIZE=1  the same under AddressSanitizer + UBSan (in build-asan/)
#   make bench            print the tensor benchmark figures
#   make fuzz             build the libFuzzer targets (clang, ASan + UBSan, in
#                         build-fuzz/) and run each for FUZZ_TIME seconds (60);
#                         FUZZ_TARGETS picks some (safetensors hh tokenizer_json
#                         tokenizer_files encode); a crash fails, naming its input
#   make format           clang-format the C sources
#   make install PREFIX=/usr/local

SANITIZE ?= 0
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
ifeq ($(SANITIZE),1)
BUILD ?= build-asan
CMAKE_FLAGS += -DDPO_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo
else
BUILD ?= build
CMAKE_FLAGS += -DCMAKE_BUILD_TYPE=Release
endif
PREFIX ?= /usr/local
FUZZ_BUILD ?= build-fuzz
FUZZ_TIME ?= 60
FUZZ_TARGETS ?=
RECIPE ?= $(firstword $(wildcard recipes/hh.lua) examples/tour.lua)
# `make run` is the main job, run again as often as wanted: it replaces its own
# run directory (runs/hh). dpolua itself never overwrites a run unless asked.
RUN_ARGS ?= $(if $(wildcard recipes/hh.lua),--overwrite,)

.PHONY: all deps configure build run test bench fuzz format install clean

all: build

deps:
	@sh tools/install-deps.sh

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) $(CMAKE_FLAGS)

configure: deps $(BUILD)/CMakeCache.txt

build: configure
	cmake --build $(BUILD) -j $(JOBS)

run: build
	$(BUILD)/dpolua $(RECIPE) $(RUN_ARGS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

bench: build
	$(BUILD)/dpolua examples/bench_tensor.lua

$(FUZZ_BUILD)/CMakeCache.txt:
	CC=clang cmake -S . -B $(FUZZ_BUILD) -DDPO_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo

fuzz: deps $(FUZZ_BUILD)/CMakeCache.txt
	cmake --build $(FUZZ_BUILD) --target fuzz_targets -j $(JOBS)
	sh tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_TIME) $(FUZZ_TARGETS)

format:
	clang-format -i core/*/*.c core/*/*.h tests/c/*.c tests/c/*.h tests/fuzz/*.c tests/fuzz/*.h tests/faults/*.c

install: build
	cmake --install $(BUILD) --prefix $(PREFIX)

clean:
	rm -rf build build-asan $(FUZZ_BUILD)
