// What this process actually loaded, for `spatiallock doctor`: libtorch's own build description
// (at::show_config, which carries the TORCH_VERSION of the library that was loaded, not of the
// headers we compiled against), the header version, and the versions and files of the CUDA runtime,
// cuDNN and NCCL that libtorch_cuda pulled in. Those are found with dlsym, so nothing here needs
// CUDA headers or fails on a machine without them. Nothing here throws.
#include <ATen/Version.h>
#include <dlfcn.h>
#include <torch/version.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <string>

namespace {

long copy_out(const std::string& s, char* buf, size_t len) {
  if (len > 0) {
    size_t n = std::min(len - 1, s.size());
    std::memcpy(buf, s.data(), n);
    buf[n] = 0;
  }
  return static_cast<long>(s.size());
}

}  // namespace

extern "C" {

// Copies at::show_config() into buf (NUL-terminated, truncated to len - 1 bytes). Returns the
// full length, or -1 when libtorch threw.
long spatiallock_torch_config(char* buf, size_t len) noexcept {
  try {
    return copy_out(at::show_config(), buf, len);
  } catch (...) {
    return -1;
  }
}

// The libtorch version of the headers this binary was compiled against.
const char* spatiallock_torch_header_version() noexcept { return TORCH_VERSION; }

// Calls `int symbol(int*)` (cudaRuntimeGetVersion, cudaDriverGetVersion, ncclGetVersion) when a
// loaded library provides it. Returns the version, or -1 when absent or the call failed.
int spatiallock_int_version(const char* symbol) noexcept {
  using Fn = int (*)(int*);
  void* f = dlsym(RTLD_DEFAULT, symbol);
  if (f == nullptr) return -1;
  int version = 0;
  if (reinterpret_cast<Fn>(f)(&version) != 0) return -1;
  return version;
}

// cudnnGetVersion() when cuDNN is loaded, else -1.
long long spatiallock_cudnn_version() noexcept {
  using Fn = size_t (*)();
  void* f = dlsym(RTLD_DEFAULT, "cudnnGetVersion");
  return f == nullptr ? -1 : static_cast<long long>(reinterpret_cast<Fn>(f)());
}

// The file of the loaded library that provides `symbol` (NULL = libtorch_cpu, through
// at::show_config), copied into buf. Returns its length, or -1 when no loaded library has it.
long spatiallock_symbol_library(const char* symbol, char* buf, size_t len) noexcept {
  void* f = symbol == nullptr ? reinterpret_cast<void*>(&at::show_config) : dlsym(RTLD_DEFAULT, symbol);
  Dl_info info;
  if (f == nullptr || dladdr(f, &info) == 0 || info.dli_fname == nullptr) return -1;
  return copy_out(info.dli_fname, buf, len);
}

// cudaMemGetInfo on CUDA device `device`: bytes free and in total. The calling thread's current
// device is set for the query and restored after. Returns 0 on success, -1 when the CUDA runtime
// is not loaded, else the CUDA error code.
int spatiallock_cuda_mem_info(int device, size_t* free_bytes, size_t* total_bytes) noexcept {
  using MemInfo = int (*)(size_t*, size_t*);
  using GetDevice = int (*)(int*);
  using SetDevice = int (*)(int);
  void* mem_info = dlsym(RTLD_DEFAULT, "cudaMemGetInfo");
  void* get_device = dlsym(RTLD_DEFAULT, "cudaGetDevice");
  void* set_device = dlsym(RTLD_DEFAULT, "cudaSetDevice");
  if (mem_info == nullptr || get_device == nullptr || set_device == nullptr) return -1;
  int previous = 0;
  int rc = reinterpret_cast<GetDevice>(get_device)(&previous);
  if (rc != 0) return rc;
  rc = reinterpret_cast<SetDevice>(set_device)(device);
  if (rc != 0) return rc;
  rc = reinterpret_cast<MemInfo>(mem_info)(free_bytes, total_bytes);
  reinterpret_cast<SetDevice>(set_device)(previous);
  return rc;
}

}
