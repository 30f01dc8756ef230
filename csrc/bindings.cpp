// Python bindings: a thin layer holding native handles. Every blocking call
// releases the GIL. Argument checks with good messages live in Python
// (storecomp.io); the checks here only keep bad input from crashing.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <stddef.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <system_error>

#include "copy.hpp"
#include "crc32c.hpp"
#include "engine.hpp"
#include "host_buffer.hpp"
#include "py_arrays.hpp"

namespace py = pybind11;
namespace sc {
void bind_aead(py::module_& m);  // aead_py.cpp
}
using sc::Batch;
using sc::Engine;
using sc::HostBuffer;
using sc::array_of;

namespace {

using I64Array = py::array_t<int64_t, py::array::c_style>;  // no forcecast: float ops are refused, not truncated

std::vector<sc::CopyRegion> copy_regions(const I64Array& a, const char* what) {
  if (a.ndim() != 2 || a.shape(1) != 2) throw std::invalid_argument(std::string(what) + " must be an int64 [n, 2] array");
  std::vector<sc::CopyRegion> out(static_cast<size_t>(a.shape(0)));
  auto r = a.unchecked<2>();
  for (size_t i = 0; i < out.size(); ++i) {
    if (r(i, 1) < 0) throw std::invalid_argument(std::string(what) + ": negative size");
    out[i] = {static_cast<uintptr_t>(r(i, 0)), static_cast<uint64_t>(r(i, 1))};
  }
  return out;
}

// copy_ops(ops [n, 11], dst regions [k, 2] (address, size), src regions, threads, nontemporal)
void copy_ops(const I64Array& ops, const I64Array& dst, const I64Array& src, unsigned threads, int nontemporal) {
  if (ops.ndim() != 2 || ops.shape(1) != static_cast<py::ssize_t>(sc::kCopyOpCols))
    throw std::invalid_argument("ops must be an int64 [n, 11] array");
  auto d = copy_regions(dst, "dst regions");
  auto s = copy_regions(src, "src regions");
  const size_t n = static_cast<size_t>(ops.shape(0));
  std::string bad = sc::check_copy_ops(ops.data(), n, d.data(), d.size(), s.data(), s.size());
  if (!bad.empty()) throw std::invalid_argument(bad);
  py::gil_scoped_release nogil;
  sc::run_copy_ops(ops.data(), n, d.data(), s.data(), threads, nontemporal);
}

// Raises the OSError subclass that matches err (FileNotFoundError, ...),
// naming filename.
[[noreturn]] void throw_oserror(int err, const std::string& filename) {
  errno = err;
  PyErr_SetFromErrnoWithFilename(PyExc_OSError, filename.c_str());
  throw py::error_already_set();
}

std::shared_ptr<Batch> submit(Engine& e, const py::array& file_ids, const py::array& ops,
                              const py::array& offsets, const py::array& lengths,
                              const py::array& addrs, uint8_t mode, const py::object& crc_steps) {
  if ((mode & ~(sc::MODE_MAPPED | sc::MODE_STREAM | sc::MODE_POPULATE)) > sc::MODE_AUTO)
    throw std::invalid_argument("mode must be 0, 1 or 2, optionally | MODE_MAPPED (| MODE_STREAM) or | MODE_POPULATE");
  size_t n = static_cast<size_t>(py::len(offsets));
  auto f = array_of<uint32_t>(file_ids, "file_ids", n);
  auto o = array_of<uint8_t>(ops, "ops", n);
  auto off = array_of<uint64_t>(offsets, "offsets", n);
  auto len = array_of<uint64_t>(lengths, "lengths", n);
  auto ad = array_of<uint64_t>(addrs, "addrs", n);
  auto batch = std::make_shared<Batch>(n);
  if (!crc_steps.is_none()) {
    auto cs = array_of<uint64_t>(crc_steps, "crc_steps", n);
    const uint64_t* csp = cs.data();
    const uint64_t* lp = len.data();
    size_t total = 0;
    for (size_t i = 0; i < n; ++i)
      if (csp[i]) total += (lp[i] + csp[i] - 1) / csp[i];
    batch->crcs.assign(total, 0);
    size_t at = 0;
    for (size_t i = 0; i < n; ++i) {
      if (!csp[i]) continue;
      batch->reqs[i].crc_step = csp[i];
      batch->reqs[i].crc_out = batch->crcs.data() + at;
      at += (lp[i] + csp[i] - 1) / csp[i];
    }
  }
  const uint32_t* fp = f.data();
  const uint8_t* op = o.data();
  const uint64_t* offp = off.data();
  const uint64_t* lenp = len.data();
  const uint64_t* adp = ad.data();
  py::gil_scoped_release nogil;
  std::shared_ptr<sc::FileEntry> last;
  uint32_t last_id = 0;
  for (size_t i = 0; i < n; ++i) {
    auto& r = batch->reqs[i];
    if (fp[i] != last_id || !last) {
      last = e.files().get(fp[i]);
      last_id = fp[i];
    }
    r.file = last;
    r.op = op[i] ? sc::OP_WRITE : sc::OP_READ;
    r.offset = offp[i];
    r.length = lenp[i];
    r.addr = static_cast<uintptr_t>(adp[i]);
  }
  return e.submit(batch, mode);
}

py::dict stats_dict(Engine& e) {
  auto& s = e.stats();
  py::dict d;
  d["requests"] = s.requests.load();
  d["pieces"] = s.pieces.load();
  d["bytes_read"] = s.bytes_read.load();
  d["bytes_written"] = s.bytes_written.load();
  d["errors"] = s.errors.load();
  d["bounce_pieces"] = s.bounce_pieces.load();
  d["direct_fallbacks"] = s.direct_fallbacks.load();
  d["nowait_hits"] = s.nowait_hits.load();
  d["nowait_misses"] = s.nowait_misses.load();
  d["fixed_buffer_pieces"] = s.fixed_buffer_pieces.load();
  d["cancelled"] = s.cancelled.load();
  d["ring_lost"] = s.ring_lost.load();
  d["bounce_handoffs"] = s.bounce_handoffs.load();
  d["bounce_arena_bytes"] = s.bounce_arena_bytes.load();
  d["mapped_pieces"] = s.mapped_pieces.load();
  d["mapped_faults"] = s.mapped_faults.load();
  d["populated_bytes"] = s.populated_bytes.load();
  d["populate_skipped"] = s.populate_skipped.load();
  return d;
}

// Pages of [off, off + len) of `fd` in the page cache (cachestat(2), Linux
// 6.5+; else mincore(2) over a read-only mapping, in 1 GiB windows; `off` a
// multiple of the page size). -1 with *err set when neither works.
int64_t cached_pages(int fd, uint64_t off, uint64_t len, uint64_t page, int* err) {
#ifdef __NR_cachestat
  constexpr long kCachestat = __NR_cachestat;
#else
  constexpr long kCachestat = 451;  // the same number on every architecture
#endif
  struct {
    uint64_t off, len;
  } range = {off, len};
  struct {
    uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted;
  } cs = {};
  if (::syscall(kCachestat, fd, &range, &cs, 0) == 0) return static_cast<int64_t>(cs.nr_cache);
  constexpr uint64_t kWindow = 1ull << 30;
  std::vector<unsigned char> vec;
  uint64_t count = 0;
  for (uint64_t at = off; at < off + len; at += kWindow) {
    uint64_t n = std::min(kWindow, off + len - at);
    void* m = ::mmap(nullptr, n, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(at));
    if (m == MAP_FAILED) {
      *err = errno;
      return -1;
    }
    vec.resize((n + page - 1) / page);
    int rc = ::mincore(m, n, vec.data());
    if (rc != 0) *err = errno;
    ::munmap(m, n);
    if (rc != 0) return -1;
    for (unsigned char v : vec) count += v & 1;
  }
  return static_cast<int64_t>(count);
}

// Bytes of the file at `path` in the page cache. `samples` > 0: a file larger
// than 4 * samples * 64 KiB is estimated from `samples` ranges of 64 KiB, one
// in each of as many equal strides, placed differently at each call (a walk
// of the whole page cache of a file costs ~9 ms per GiB, once per epoch;
// this ~1 us per range); the whole size when every sampled page is resident.
// -1 with *err set when nothing can be known.
int64_t resident_bytes(const std::string& path, uint32_t samples, int* err) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    *err = errno;
    return -1;
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    *err = errno;
    ::close(fd);
    return -1;
  }
  const auto page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const auto size = static_cast<uint64_t>(st.st_size);
  constexpr uint64_t kSampleBytes = 64 << 10;
  int64_t out = -1;
  if (samples == 0 || size <= 4ull * samples * kSampleBytes) {
    int64_t n = cached_pages(fd, 0, size, page, err);
    if (n >= 0) out = static_cast<int64_t>(std::min<uint64_t>(static_cast<uint64_t>(n) * page, size));
  } else {
    static std::atomic<uint64_t> calls{0};
    uint64_t h = (calls.fetch_add(1) + 1) * 0x9E3779B97F4A7C15ull;  // a different placement at each call
    const uint64_t stride = size / samples, per = kSampleBytes / page;
    uint64_t cached = 0;
    bool ok = true;
    for (uint32_t i = 0; i < samples && ok; ++i) {
      h ^= h >> 29;
      h *= 0xBF58476D1CE4E5B9ull;
      const uint64_t start = (i * stride + h % (stride - kSampleBytes)) / page * page;
      int64_t n = cached_pages(fd, start, kSampleBytes, page, err);
      ok = n >= 0;
      cached += ok ? std::min<uint64_t>(static_cast<uint64_t>(n), per) : 0;
    }
    const uint64_t total = per * samples;
    if (ok)
      out = cached == total ? static_cast<int64_t>(size)
                            : static_cast<int64_t>(static_cast<double>(size) * static_cast<double>(cached) / static_cast<double>(total));
  }
  ::close(fd);
  return out;
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "storecomp native I/O engine";
  // Any other system error becomes an OSError carrying its errno.
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const std::system_error& ex) {
      py::object exc = py::reinterpret_steal<py::object>(
          PyObject_CallFunction(PyExc_OSError, "is", ex.code().value(), ex.what()));
      if (exc) PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
    }
  });
#ifdef STORECOMP_HAVE_LIBURING
  m.attr("HAVE_LIBURING") = true;
#else
  m.attr("HAVE_LIBURING") = false;
#endif
  m.attr("MODE_BUFFERED") = static_cast<int>(sc::MODE_BUFFERED);
  m.attr("MODE_DIRECT") = static_cast<int>(sc::MODE_DIRECT);
  m.attr("MODE_AUTO") = static_cast<int>(sc::MODE_AUTO);
  m.attr("MODE_MAPPED") = static_cast<int>(sc::MODE_MAPPED);
  m.attr("MODE_STREAM") = static_cast<int>(sc::MODE_STREAM);
  m.attr("MODE_POPULATE") = static_cast<int>(sc::MODE_POPULATE);

  m.def("probe_io_uring", [] {
    sc::UringProbe p;
    {
      py::gil_scoped_release nogil;
      p = sc::probe_uring();
    }
    py::dict d;
    d["compiled"] = p.compiled;
    d["permitted"] = p.permitted;
    d["reason"] = p.reason;
    return d;
  });
  m.def(
      "crc32c",
      [](py::buffer data, uint32_t value) {
        py::buffer_info info = data.request();
        if (!PyBuffer_IsContiguous(info.view(), 'C'))
          throw std::invalid_argument("crc32c needs a contiguous buffer");
        size_t n = static_cast<size_t>(info.size * info.itemsize);
        py::gil_scoped_release nogil;
        return sc::crc32c(value, info.ptr, n);
      },
      py::arg("data"), py::arg("value") = 0);
  m.attr("CRC32C_HARDWARE") = sc::crc32c_hardware();
  m.def(
      "resident_bytes",
      [](const std::string& path, uint32_t samples) {
        int err = 0;
        int64_t n;
        {
          py::gil_scoped_release nogil;
          n = resident_bytes(path, samples, &err);
        }
        if (n < 0) throw_oserror(err, path);
        return n;
      },
      py::arg("path"), py::arg("samples") = 0);
  m.def("copy_ops", &copy_ops, py::arg("ops"), py::arg("dst"), py::arg("src"), py::arg("threads") = 1,
        py::arg("nontemporal") = -1);

  py::class_<HostBuffer>(m, "HostBuffer", py::buffer_protocol())
      .def(py::init<uint64_t>(), py::arg("nbytes"))
      .def_property_readonly("address", &HostBuffer::address)
      .def_property_readonly("nbytes", &HostBuffer::nbytes)
      .def("prefault", &HostBuffer::prefault, py::call_guard<py::gil_scoped_release>())
      .def_buffer([](HostBuffer& b) -> py::buffer_info {
        return py::buffer_info(b.data(), 1, py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(b.nbytes())}, {1});
      });

  py::class_<Batch, std::shared_ptr<Batch>>(m, "Batch")
      .def("wait", &Batch::wait, py::arg("timeout") = -1.0, py::call_guard<py::gil_scoped_release>())
      .def("done", &Batch::is_finished)
      .def("__len__", [](Batch& b) { return b.reqs.size(); })
      .def("crcs", [](Batch& b) {
        if (!b.is_finished()) throw std::runtime_error("batch not finished");
        py::array_t<uint32_t> out(b.crcs.size());
        if (!b.crcs.empty()) std::memcpy(out.mutable_data(), b.crcs.data(), b.crcs.size() * 4);
        return out;
      })
      .def("results", [](Batch& b) {
        if (!b.is_finished()) throw std::runtime_error("batch not finished");
        size_t n = b.reqs.size();
        py::array_t<uint64_t> nbytes(n), err_offsets(n);
        py::array_t<int32_t> errs(n);
        auto* nb = nbytes.mutable_data();
        auto* eo = err_offsets.mutable_data();
        auto* er = errs.mutable_data();
        for (size_t i = 0; i < n; ++i) {
          nb[i] = b.reqs[i].valid.load();
          er[i] = b.reqs[i].err.load();
          eo[i] = b.reqs[i].err_offset.load();
        }
        return py::make_tuple(nbytes, errs, err_offsets);
      });

  py::class_<Engine>(m, "Engine")
      .def(py::init([](const std::string& backend, unsigned queue_depth, unsigned threads,
                       uint64_t split_bytes, uint64_t align, uint64_t bounce_bytes) {
             sc::Config c;
             c.backend = backend;
             c.queue_depth = queue_depth;
             c.threads = threads;
             c.split_bytes = split_bytes;
             c.align = align;
             c.bounce_bytes = bounce_bytes;
             py::gil_scoped_release nogil;
             return new Engine(c);
           }),
           py::arg("backend") = "auto", py::arg("queue_depth") = 64, py::arg("threads") = 4,
           py::arg("split_bytes") = 1 << 20, py::arg("align") = 4096, py::arg("bounce_bytes") = 1 << 20)
      .def_property_readonly("backend", &Engine::backend)
      .def_property_readonly("backend_reason", &Engine::backend_reason)
      .def_property_readonly("queue_depth", [](Engine& e) { return e.config().queue_depth; })
      .def_property_readonly("threads", [](Engine& e) { return e.config().threads; })
      .def_property_readonly("split_bytes", [](Engine& e) { return e.config().split_bytes; })
      .def_property_readonly("align", [](Engine& e) { return e.config().align; })
      .def(
          "open",
          [](Engine& e, const std::string& path, bool writable, bool create) {
            try {
              py::gil_scoped_release nogil;
              return e.files().open(path, writable, create);
            } catch (const std::system_error& ex) {
              throw_oserror(ex.code().value(), path);
            }
          },
          py::arg("path"), py::arg("writable") = false, py::arg("create") = false)
      .def("close_file", [](Engine& e, uint32_t id) {
             py::gil_scoped_release nogil;  // close(2) may block (NFS, FUSE flushes)
             e.files().close(id);
           })
      .def("fsync",
           [](Engine& e, uint32_t id) {
             auto f = e.files().get(id);
             if (!f) throw std::invalid_argument("file is not open");
             int rc, err = 0;
             {
               py::gil_scoped_release nogil;
               rc = ::fsync(f->fd_buffered);
               if (rc != 0) err = errno;
             }
             if (rc != 0) throw_oserror(err, f->path);
           })
      .def("file_stat",
           [](Engine& e, uint32_t id) {
             // (st_dev, st_ino, st_size, st_mtime_ns) of the inode this file id opened.
             auto f = e.files().get(id);
             if (!f) throw std::invalid_argument("file is not open");
             struct stat st;
             if (::fstat(f->fd_buffered, &st) != 0) throw_oserror(errno, f->path);
             int64_t mtime_ns = int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
             return py::make_tuple(uint64_t(st.st_dev), uint64_t(st.st_ino), int64_t(st.st_size), mtime_ns);
           })
      .def("direct_alignment",
           [](Engine& e, uint32_t id) -> py::object {
             // (memory, offset) alignment in bytes that O_DIRECT needs for this file; None without O_DIRECT.
             auto f = e.files().get(id);
             if (!f) throw std::invalid_argument("file is not open");
             int fd;
             {
               py::gil_scoped_release nogil;
               fd = f->direct_fd();
             }
             if (fd < 0) return py::none();
             uint64_t a = e.config().align;
             return py::make_tuple(f->dio_mem_align ? f->dio_mem_align : a, f->dio_offset_align ? f->dio_offset_align : a);
           })
      .def("release_mapping",
           [](Engine& e, uint32_t id) {
             auto f = e.files().get(id);
             if (!f) throw std::invalid_argument("file is not open");
             py::gil_scoped_release nogil;  // munmap of a large mapping takes a while
             f->release_mapping();
           })
      .def("open_files", [](Engine& e) { return e.files().size(); })
      .def("submit", &submit, py::arg("file_ids"), py::arg("ops"), py::arg("offsets"),
           py::arg("lengths"), py::arg("addrs"), py::arg("mode"), py::arg("crc_steps") = py::none())
      .def("register_buffer", &Engine::register_buffer, py::call_guard<py::gil_scoped_release>())
      .def("unregister_buffer", &Engine::unregister_buffer, py::call_guard<py::gil_scoped_release>())
      .def("stats", &stats_dict)
      .def("shutdown", &Engine::shutdown, py::call_guard<py::gil_scoped_release>());
  sc::bind_aead(m);
}
