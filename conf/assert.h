#pragma once
// GH_ASSERT(condition): an invariant the code relies on, not a check of
// anything a user, a file or a peer can get wrong (those get error messages).
// With GATEHOUSE_ASSERTIONS defined (the CMake option of that name, on by
// default) a broken invariant prints where and what, then aborts, so the core
// dump shows the state that broke it instead of a later, stranger failure.
// Without it the condition is still compiled, so it cannot rot, but never
// evaluated: it must have no side effects.
//
// In conf/, the lowest layer, so that every library can use it.

#if defined(GATEHOUSE_ASSERTIONS)

#include <cstdio>
#include <cstdlib>

namespace gatehouse::detail {

[[noreturn]] inline void assertion_failed(const char* file, int line, const char* condition) {
  std::fprintf(stderr, "%s:%d: gatehouse: assertion failed: %s\n", file, line, condition);
  std::abort();
}

}  // namespace gatehouse::detail

#define GH_ASSERT(condition) \
  ((condition) ? static_cast<void>(0) : ::gatehouse::detail::assertion_failed(__FILE__, __LINE__, #condition))

#else

#define GH_ASSERT(condition) static_cast<void>(sizeof(!(condition)))

#endif
