// PyTorch's distributed engine (c10d), which libtorch ships, bound for `model::dist`: a TCPStore
// for rendezvous and a process group (Gloo for CPU ranks; NCCL for CUDA ranks when built with
// SPATIALLOCK_WITH_NCCL) for all-reduce, broadcast and barrier. Tensors arrive as tch's
// `torch::Tensor*`. Nothing here throws: every call returns 0 on success, or -1 and a message the
// caller frees with spatiallock_c10d_free_string.
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <thread>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef SPATIALLOCK_WITH_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace {

struct Group {
  c10::intrusive_ptr<c10d::TCPStore> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  // A thread that counts up `spatiallock/beat/<rank>` in the store on its own connection, so a
  // rank that died or stalled can be told from one that is merely slow.
  std::atomic<bool> beating{false};
  std::thread heart;
  // Collectives this rank has entered; the heartbeat publishes it as
  // `spatiallock/entered/<rank>` (no store round trip on the collectives' path).
  std::atomic<long long> entered{0};

  ~Group() {
    beating = false;
    if (heart.joinable()) {
      heart.join();
    }
  }
};

char* copy_message(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, s.c_str(), s.size() + 1);
  }
  return out;
}

template <typename F>
int guarded(char** err, F&& f) noexcept {
  try {
    f();
    return 0;
  } catch (const c10::Error& e) {
    *err = copy_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    *err = copy_message(e.what());
  } catch (...) {
    *err = copy_message("unknown C++ exception in c10d");
  }
  return -1;
}

void wait(const c10::intrusive_ptr<c10d::Work>& work) {
  if (!work->wait()) {
    throw std::runtime_error("the collective was aborted");
  }
}

}  // namespace

extern "C" {

// Joins the group: rank 0 serves the TCPStore at master_addr:port, the others connect to it;
// every call waits (at most timeout_ms) for all `world` ranks. `backend` is "gloo" or "nccl";
// `interface` (may be empty) names the network interface Gloo binds, else the host name's
// address (or loopback) is used; `cuda_device` is this rank's GPU for NCCL.
int spatiallock_c10d_new(const char* backend, const char* master_addr, int port, int rank, int world,
                         long long timeout_ms, const char* interface, int cuda_device, void** group,
                         char** err) noexcept {
  *group = nullptr;
  return guarded(err, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = rank == 0;
    opts.numWorkers = static_cast<std::size_t>(world);
    opts.waitWorkers = true;
    opts.timeout = timeout;
    auto g = std::make_unique<Group>();
    g->store = c10::make_intrusive<c10d::TCPStore>(std::string(master_addr), opts);
    std::string which(backend);
    if (which == "gloo") {
      auto options = c10d::ProcessGroupGloo::Options::create(timeout);
      std::string iface(interface);
      options->devices.push_back(iface.empty() ? c10d::ProcessGroupGloo::createDefaultDevice()
                                               : c10d::ProcessGroupGloo::createDeviceForInterface(iface));
      g->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(g->store, rank, world, options);
    } else if (which == "nccl") {
#ifdef SPATIALLOCK_WITH_NCCL
      c10::cuda::set_device(static_cast<c10::DeviceIndex>(cuda_device));
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout;
      g->backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(g->store, rank, world, options);
#else
      (void)cuda_device;
      throw std::runtime_error(
          "this build has no NCCL process group: build with `--features nccl` (scripts/setup-nccl.sh "
          "installs the CUDA headers it needs)");
#endif
    } else {
      throw std::runtime_error("unknown c10d backend `" + which + "` (gloo or nccl)");
    }
    *group = g.release();
  });
}

// Starts this rank's heartbeat: every `interval_ms`, +1 on `spatiallock/beat/<rank>`.
int spatiallock_c10d_start_heartbeat(void* group, int rank, long long interval_ms, char** err) noexcept {
  return guarded(err, [&] {
    auto* g = static_cast<Group*>(group);
    auto store = g->store->clone();
    std::string key = "spatiallock/beat/" + std::to_string(rank);
    std::string entered_key = "spatiallock/entered/" + std::to_string(rank);
    g->beating = true;
    g->heart = std::thread([g, store, key, entered_key, interval_ms] {
      long long published = 0;
      while (g->beating) {
        try {
          long long now = g->entered.load();
          if (now != published) {
            store->add(entered_key, now - published);
            published = now;
          }
          store->add(key, 1);
        } catch (...) {
          return;  // the store is gone: there is nobody to tell
        }
        for (long long slept = 0; slept < interval_ms && g->beating; slept += 50) {
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
      }
    });
  });
}

// Records that this rank entered its n-th collective (published by the heartbeat).
void spatiallock_c10d_set_entered(void* group, long long n) noexcept { static_cast<Group*>(group)->entered = n; }

// Adds `delta` to the counter `key` in the store (0 reads it); *value is the count after.
int spatiallock_c10d_store_add(void* group, const char* key, long long delta, long long* value,
                               char** err) noexcept {
  return guarded(err, [&] { *value = static_cast<Group*>(group)->store->add(std::string(key), delta); });
}

// Whether this build carries the NCCL process group.
bool spatiallock_c10d_has_nccl() noexcept {
#ifdef SPATIALLOCK_WITH_NCCL
  return true;
#else
  return false;
#endif
}

// Sums `tensor` (dense, contiguous, same shape on every rank) over the ranks, in place.
int spatiallock_c10d_all_reduce_sum(void* group, void* tensor, char** err) noexcept {
  return guarded(err, [&] {
    auto* g = static_cast<Group*>(group);
    std::vector<at::Tensor> tensors{*static_cast<at::Tensor*>(tensor)};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    wait(g->backend->allreduce(tensors, opts));
  });
}

// Copies rank `root`'s `tensor` into every rank's, in place.
int spatiallock_c10d_broadcast(void* group, void* tensor, int root, char** err) noexcept {
  return guarded(err, [&] {
    auto* g = static_cast<Group*>(group);
    std::vector<at::Tensor> tensors{*static_cast<at::Tensor*>(tensor)};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    wait(g->backend->broadcast(tensors, opts));
  });
}

// Waits until every rank has called it.
int spatiallock_c10d_barrier(void* group, char** err) noexcept {
  return guarded(err, [&] {
    auto* g = static_cast<Group*>(group);
    wait(g->backend->barrier(c10d::BarrierOptions()));
  });
}

// Sets the timeout of the store's blocking calls.
void spatiallock_c10d_store_timeout(void* group, long long timeout_ms) noexcept {
  try {
    static_cast<Group*>(group)->store->setTimeout(std::chrono::milliseconds(timeout_ms));
  } catch (...) {
  }
}

void spatiallock_c10d_free(void* group) noexcept {
  try {
    delete static_cast<Group*>(group);
  } catch (...) {
  }
}

void spatiallock_c10d_free_string(char* s) noexcept { std::free(s); }
}

extern "C" {
// Makes `grad` the `.grad` of `param` (a rank whose shard left a parameter unused still takes
// part in its all-reduce, as the one-rank run's gradient is defined there).
int spatiallock_set_grad(void* param, void* grad, char** err) noexcept {
  return guarded(err, [&] { static_cast<at::Tensor*>(param)->mutable_grad() = *static_cast<at::Tensor*>(grad); });
}
}
