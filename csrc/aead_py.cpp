// Python bindings of the AES-GCM segment cipher and of sealed reads on the
// engine (aead.hpp). Argument checks with good messages live in Python
// (storecomp.io.aead); the checks here only keep bad input from crashing.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstring>
#include <stdexcept>
#include <string>

#include "aead.hpp"
#include "engine.hpp"
#include "py_arrays.hpp"

namespace py = pybind11;

namespace sc {

namespace {

// A writable (or readable) contiguous byte view of a Python buffer. The view
// holds the buffer export: while it lives (across a GIL release too) the
// object cannot be resized or freed under the pointer. Destroy it with the
// GIL held (declare it before any gil_scoped_release).
struct View {
  py::buffer_info info;
  uint8_t* ptr;
  size_t size;
};

View bytes_of(const py::buffer& b, bool writable, const char* name) {
  py::buffer_info info = b.request(writable);
  if (!PyBuffer_IsContiguous(info.view(), 'C')) throw std::invalid_argument(std::string(name) + ": not contiguous");
  auto* ptr = static_cast<uint8_t*>(info.ptr);
  auto size = static_cast<size_t>(info.size * info.itemsize);
  return View{std::move(info), ptr, size};
}

std::string key_bytes(const py::bytes& b, size_t n, const char* name) {
  std::string s = b;
  if (s.size() != n) throw std::invalid_argument(std::string(name) + " must be " + std::to_string(n) + " bytes");
  return s;
}

// One native batch of sealed reads: request i reads lengths[i] bytes at
// offsets[i] of file file_ids[i] into addrs[i], and opens them as segments
// first_segments[i].. of keys[key_index[i]], with the tags (16 bytes per
// segment, requests in order) from `tags`.
std::shared_ptr<Batch> submit_sealed(Engine& e, const py::array& file_ids, const py::array& offsets,
                                     const py::array& lengths, const py::array& addrs, uint8_t mode,
                                     const py::list& keys, const py::array& key_index,
                                     const py::array& first_segments, const py::buffer& tags) {
  if (mode > MODE_AUTO) throw std::invalid_argument("mode must be 0, 1 or 2");
  size_t n = static_cast<size_t>(py::len(offsets));
  auto f = array_of<uint32_t>(file_ids, "file_ids", n);
  auto off = array_of<uint64_t>(offsets, "offsets", n);
  auto len = array_of<uint64_t>(lengths, "lengths", n);
  auto ad = array_of<uint64_t>(addrs, "addrs", n);
  auto ki = array_of<int32_t>(key_index, "key_index", n);
  auto fs = array_of<uint64_t>(first_segments, "first_segments", n);
  std::vector<std::shared_ptr<const AeadKey>> ks;
  for (auto k : keys) ks.push_back(k.cast<std::shared_ptr<AeadKey>>());
  View tv = bytes_of(tags, false, "tags");
  const uint8_t* tp = tv.ptr;
  size_t tn = tv.size;
  auto batch = std::make_shared<Batch>(n);
  auto state = std::make_shared<AeadBatch>(n);
  size_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    int32_t k = ki.data()[i];
    if (k < 0 || static_cast<size_t>(k) >= ks.size()) throw std::invalid_argument("key_index out of range");
    uint64_t s = ks[k]->segment_bytes(), l = len.data()[i];
    uint64_t segs = ceil_div(l, s);
    if (fs.data()[i] > ks[k]->segments() || segs > ks[k]->segments() - fs.data()[i])
      throw std::invalid_argument("a request reaches past its object's last segment");
    total += segs;
  }
  if (tn != total * AeadKey::kTagBytes) throw std::invalid_argument("tags: 16 bytes per segment read expected");
  state->tags.assign(tp, tp + tn);
  py::gil_scoped_release nogil;
  std::shared_ptr<FileEntry> last;
  uint32_t last_id = 0;
  size_t at = 0;
  for (size_t i = 0; i < n; ++i) {
    auto& r = batch->reqs[i];
    if (f.data()[i] != last_id || !last) {
      last = e.files().get(f.data()[i]);
      last_id = f.data()[i];
    }
    r.file = last;
    r.op = OP_READ;
    r.offset = off.data()[i];
    r.length = len.data()[i];
    r.addr = static_cast<uintptr_t>(ad.data()[i]);
    auto& a = state->reqs[i];
    a.key = ks[ki.data()[i]];
    a.first_segment = fs.data()[i];
    a.tags = state->tags.data() + at * AeadKey::kTagBytes;
    a.failed = &state->failed[i];
    a.opened = &state->opened[i];
    at += ceil_div(r.length, a.key->segment_bytes());
    r.aead = &a;
  }
  batch->aead_state = state;
  return e.submit(batch, mode);
}

}  // namespace

void bind_aead(py::module_& m) {
  m.def("aead_status", [] {
    const AeadStatus& s = aead_status();
    py::dict d;
    d["available"] = s.available;
    d["reason"] = s.reason;
    d["version"] = s.version;
    return d;
  });
  m.def("aead_cached_contexts", &aead_cached_contexts);
  py::class_<AeadKey, std::shared_ptr<AeadKey>>(m, "AeadKey")
      .def(py::init([](const py::bytes& key, const py::bytes& nonce_base, const py::bytes& aad_prefix, uint64_t segments,
                       uint64_t segment_bytes) {
             std::string k = key_bytes(key, AeadKey::kKeyBytes, "key");
             std::string nb = key_bytes(nonce_base, AeadKey::kNonceBytes, "nonce_base");
             auto out = std::make_shared<AeadKey>(reinterpret_cast<const uint8_t*>(k.data()),
                                                  reinterpret_cast<const uint8_t*>(nb.data()),
                                                  std::string(aad_prefix), segments, segment_bytes);
             std::fill(k.begin(), k.end(), '\0');
             return out;
           }),
           py::arg("key"), py::arg("nonce_base"), py::arg("aad_prefix"), py::arg("segments"), py::arg("segment_bytes"))
      .def_property_readonly("segments", &AeadKey::segments)
      .def_property_readonly("segment_bytes", &AeadKey::segment_bytes)
      .def(
          "open",
          [](const AeadKey& k, uint64_t i, const py::buffer& data, const py::buffer& tag, const py::object& out) {
            View t = bytes_of(tag, false, "tag");
            if (t.size != AeadKey::kTagBytes) throw std::invalid_argument("tag must be 16 bytes");
            if (out.is_none()) {
              View d = bytes_of(data, true, "data");
              py::gil_scoped_release nogil;
              return k.open(i, d.ptr, d.size, t.ptr);
            }
            View in = bytes_of(data, false, "data");
            View o = bytes_of(out.cast<py::buffer>(), true, "out");
            if (o.size != in.size) throw std::invalid_argument("out must be as long as data");
            py::gil_scoped_release nogil;
            return k.open(i, in.ptr, o.ptr, in.size, t.ptr);
          },
          py::arg("index"), py::arg("data"), py::arg("tag"), py::arg("out") = py::none())
      .def(
          "seal",
          [](const AeadKey& k, uint64_t i, const py::buffer& plain, const py::buffer& out) {
            View in = bytes_of(plain, false, "plain");
            View o = bytes_of(out, true, "out");
            if (o.size != in.size) throw std::invalid_argument("out must be as long as plain");
            uint8_t tag[AeadKey::kTagBytes];
            {
              py::gil_scoped_release nogil;
              k.seal(i, in.ptr, o.ptr, in.size, tag);
            }
            return py::bytes(reinterpret_cast<const char*>(tag), sizeof tag);
          },
          py::arg("index"), py::arg("plain"), py::arg("out"));
  m.def("submit_sealed", &submit_sealed, py::arg("engine"), py::arg("file_ids"), py::arg("offsets"), py::arg("lengths"),
        py::arg("addrs"), py::arg("mode"), py::arg("keys"), py::arg("key_index"), py::arg("first_segments"),
        py::arg("tags"));
  m.def(
      "sealed_failures",
      [](Batch& b) {
        if (!b.is_finished()) throw std::runtime_error("batch not finished");
        auto state = std::static_pointer_cast<AeadBatch>(b.aead_state);
        size_t n = b.reqs.size();
        py::array_t<int64_t> out(n);
        auto* o = out.mutable_data();
        if (!state) throw std::invalid_argument("not a batch of sealed reads");
        for (size_t i = 0; i < n; ++i) o[i] = state->verdict(i, b.reqs[i].length);
        return out;
      },
      py::arg("batch"));
}

}  // namespace sc
