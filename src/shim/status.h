// How the C++ shims report errors to Rust: every entry point runs its body through `guarded`,
// which turns a C++ exception into status 1 and keeps the message per thread, readable through
// `scoreflow_shim_last_error()` (defined once, in optim.cpp, which is always built).
#pragma once

#include <exception>
#include <string>

extern thread_local std::string scoreflow_shim_error;

template <typename F>
int guarded(F f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    scoreflow_shim_error = e.what();
  } catch (...) {
    scoreflow_shim_error = "unknown C++ exception";
  }
  return 1;
}
