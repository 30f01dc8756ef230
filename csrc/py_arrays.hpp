// Argument arrays of the bindings (bindings.cpp, aead_py.cpp): one entry per
// request, converted to the element type the native code reads. The checks
// with good messages live in Python (storecomp.io); these only keep bad input
// from crashing.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstddef>
#include <stdexcept>
#include <string>

namespace sc {

// `a` as a C-contiguous 1-D array of T with n entries (any n when n is SIZE_MAX).
template <typename T>
pybind11::array_t<T> array_of(const pybind11::array& a, const char* name, size_t n) {
  auto out = pybind11::array_t<T, pybind11::array::c_style | pybind11::array::forcecast>::ensure(a);
  if (!out) throw std::invalid_argument(std::string(name) + ": not convertible to an array");
  if (out.ndim() != 1 || (n != SIZE_MAX && static_cast<size_t>(out.shape(0)) != n))
    throw std::invalid_argument(std::string(name) + ": must be 1-D with one entry per request");
  return out;
}

}  // namespace sc
