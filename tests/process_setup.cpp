// Linked into every test binary: the process set-up of sinkflow's launcher (tools/main.cpp), so that tests run
// with the allocator setting the commands use.
#define CATCH_CONFIG_EXTERNAL_INTERFACES
#include <catch2/catch.hpp>

#include "models/nn/runtime.h"

namespace {

struct ProcessSetup : Catch::TestEventListenerBase {
  using TestEventListenerBase::TestEventListenerBase;
  void testRunStarting(const Catch::TestRunInfo&) override {
    sinkflow::keep_freed_memory();
    sinkflow::select_blas_kernels();
  }
};

}  // namespace

CATCH_REGISTER_LISTENER(ProcessSetup)
