// A small SIMT emulation: the CUDA kernel bodies of csrc/cuda/*.cu compiled with g++ and run on the CPU.
//
// One std::thread per CUDA thread of a block; the blocks of a grid run one after another, in a random order
// (a GPU promises no order, so a result that depends on it shows up as a difference between seeds). Each
// block has its own barrier for __syncthreads, an exchange per warp for the *_sync intrinsics, and shared
// memory filled with NaN (0xFF bytes) before it starts, with ASan poisoning what the block did not allocate.
// It checks what a GPU would refuse or leave undefined, and raises a catchable Fault instead:
// - launch limits: block ≤ 1024 threads (x, y ≤ 1024, z ≤ 64), gridDim.x < 2^31, gridDim.y/z ≤ 65535, shared
//   memory ≤ 48 KB or the kernel's opt-in (at most 99 KB, the smallest of the shipped architectures);
// - a *_sync whose mask names a lane that has exited, does not exist, or leaves out the caller; lanes that
//   disagree on the mask; a shuffle reading a lane outside the mask;
// - __syncthreads not reached by every thread of the block (some exited, or exit while others wait);
// - vector loads and stores at addresses not aligned to their width (check_aligned);
// - device assertions (FASTMIM_DEVICE_ASSERT).
// Out-of-bounds and use-after-free accesses are ASan's, integer overflow and misaligned typed accesses UBSan's:
// the emulated library is built with both (tests/emulation/build.py).
//
// std::barrier cannot tell a thread that left the kernel from one that is late, so the block barrier is a
// mutex and condition variable that can; std::barrier does separate consecutive blocks.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <barrier>
#include <bit>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define FASTMIM_SIMT_POISON(p, n) __asan_poison_memory_region((p), (n))
#define FASTMIM_SIMT_UNPOISON(p, n) __asan_unpoison_memory_region((p), (n))
#else
#define FASTMIM_SIMT_POISON(p, n) ((void)(p), (void)(n))
#define FASTMIM_SIMT_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

namespace fastmim::simt {

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x, y, z;
};

// What a GPU would report as a failed launch or a fault, or leave undefined.
class Fault : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Unwinds the other threads of a block once one has faulted; never reported.
struct Aborted {};

struct Limits {
  unsigned max_block_threads = 1024, max_block_x = 1024, max_block_y = 1024, max_block_z = 64;
  uint64_t max_grid_x = 2147483647u;
  unsigned max_grid_y = 65535, max_grid_z = 65535;
  size_t default_shared = 48 * 1024;
  size_t max_opt_in_shared = 99 * 1024;  // sm_120 (sm_80: 163 KB, sm_90/sm_100: 227 KB)
  uint64_t block_order_seed = 0;         // the order the blocks of each launch run in
};

inline Limits& limits() {
  static Limits value;
  return value;
}

template <typename... Parts>
[[noreturn]] void fault(const Parts&... parts) {
  std::ostringstream message;
  (message << ... << parts);
  throw Fault(message.str());
}

constexpr unsigned kWarpSize = 32;

struct Warp {
  unsigned lanes = kWarpSize;  // lanes that exist (the last warp of a block may be partial)
  uint32_t exited = 0;         // lanes that have left the kernel
  uint32_t deposited = 0;      // lanes that reached the current exchange
  uint32_t mask = 0;           // the mask of the current exchange
  unsigned readers = 0;        // lanes still to read the current exchange
  bool draining = false;       // every lane of the mask deposited; reading
  std::array<uint64_t, kWarpSize> values{};
};

// The state of the block being run, shared by its threads.
struct Block {
  unsigned threads = 0;
  std::vector<Warp> warps;
  std::mutex mutex;
  std::condition_variable changed;  // __syncthreads waiters
  // The lanes waiting in a warp exchange, one variable per warp: waking only the warp concerned, not all the
  // threads of the block, keeps a warp reduction from costing a wake-up of every thread.
  std::unique_ptr<std::condition_variable[]> warp_changed;
  size_t warp_variables = 0;
  bool aborted = false;
  std::exception_ptr error;
  // __syncthreads
  unsigned arrived = 0, exited = 0;
  uint64_t generation = 0;
  // shared memory: the dynamic part first, then static arrays as their declarations are reached
  std::vector<std::byte> shared;
  size_t dynamic_bytes = 0, used_bytes = 0, shared_limit = 0;
  std::map<const void*, size_t> static_offsets;

  void start(unsigned block_threads) {
    threads = block_threads;
    warps.assign((threads + kWarpSize - 1) / kWarpSize, Warp{});
    if (threads % kWarpSize) warps.back().lanes = threads % kWarpSize;
    if (warp_variables != warps.size()) {  // the first block of a launch: no thread waits yet
      warp_changed = std::make_unique<std::condition_variable[]>(warps.size());
      warp_variables = warps.size();
    }
    arrived = exited = 0;
    generation = 0;
    static_offsets.clear();
    used_bytes = dynamic_bytes;
    FASTMIM_SIMT_UNPOISON(shared.data(), shared.size());
    std::memset(shared.data(), 0xFF, dynamic_bytes);  // NaN for every float type, -1 for integers
    FASTMIM_SIMT_POISON(shared.data() + dynamic_bytes, shared.size() - dynamic_bytes);
  }

  void record(std::exception_ptr e) {
    std::lock_guard<std::mutex> lock(mutex);
    if (!error) error = e;
    aborted = true;
    notify_everyone();
  }

  void notify_everyone() {
    changed.notify_all();
    for (size_t i = 0; i < warp_variables; ++i) warp_changed[i].notify_all();
  }
};

// Which thread of which block the calling std::thread is.
struct ThreadState {
  Block* block = nullptr;
  unsigned rank = 0, lane = 0, warp = 0;
};

inline thread_local ThreadState self;

}  // namespace fastmim::simt

// The CUDA built-in variables and types, as the kernels name them.
using dim3 = fastmim::simt::dim3;
using uint3 = fastmim::simt::uint3;
inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)

namespace fastmim::simt {

inline Block& current_block() {
  if (self.block == nullptr) fault("a device function was called outside an emulated kernel");
  return *self.block;
}

inline void throw_if_aborted(const Block& b) {
  if (b.aborted) throw Aborted{};
}

// --- __syncthreads ------------------------------------------------------------------------------------------

inline void syncthreads() {
  Block& b = current_block();
  std::unique_lock<std::mutex> lock(b.mutex);
  throw_if_aborted(b);
  if (b.exited > 0) {
    fault("__syncthreads() is not reached by every thread of the block: ", b.exited, " of ", b.threads,
          " threads have already exited (thread ", self.rank, " arrived)");
  }
  const uint64_t generation = b.generation;
  if (++b.arrived == b.threads) {
    b.arrived = 0;
    ++b.generation;
    b.changed.notify_all();
    return;
  }
  b.changed.wait(lock, [&] { return b.aborted || b.generation != generation || b.exited > 0; });
  throw_if_aborted(b);
  if (b.generation == generation) {
    fault("__syncthreads() is not reached by every thread of the block: a thread exited while ", b.arrived,
          " of ", b.threads, " threads waited at it");
  }
}

// --- warp exchange for the *_sync intrinsics ----------------------------------------------------------------

inline uint32_t existing_lanes(const Warp& w) { return w.lanes == kWarpSize ? ~0u : (1u << w.lanes) - 1; }

inline void check_mask(const Warp& w, uint32_t mask, const char* what) {
  const unsigned lane = self.lane;
  if (!(mask >> lane & 1u)) fault(what, ": the mask 0x", std::hex, mask, std::dec, " leaves out its caller, lane ", lane);
  if (mask & ~existing_lanes(w)) {
    fault(what, ": the mask 0x", std::hex, mask, std::dec, " names lanes that do not exist (warp ", self.warp,
          " has ", w.lanes, " lanes)");
  }
  if (mask & w.exited) {
    fault(what, ": the mask 0x", std::hex, mask, std::dec, " names lane ", std::countr_zero(mask & w.exited),
          ", which has exited");
  }
}

// Every lane of `mask` deposits a value; each gets all of them once the last one arrived.
inline std::array<uint64_t, kWarpSize> exchange(uint32_t mask, uint64_t bits, const char* what) {
  Block& b = current_block();
  Warp& w = b.warps[self.warp];
  std::unique_lock<std::mutex> lock(b.mutex);
  throw_if_aborted(b);
  check_mask(w, mask, what);
  std::condition_variable& changed = b.warp_changed[self.warp];
  changed.wait(lock, [&] { return b.aborted || !w.draining; });  // the previous exchange is still being read
  throw_if_aborted(b);
  if (w.deposited == 0) {
    w.mask = mask;
  } else if (w.mask != mask) {
    fault(what, ": lanes of warp ", self.warp, " disagree on the mask (0x", std::hex, w.mask, " and 0x", mask, ")");
  }
  w.values[self.lane] = bits;
  w.deposited |= 1u << self.lane;
  if (w.deposited == w.mask) {
    w.draining = true;
    w.readers = static_cast<unsigned>(std::popcount(w.mask));
    changed.notify_all();
  } else {
    changed.wait(lock, [&] { return b.aborted || w.draining || (w.mask & w.exited & ~w.deposited); });
    throw_if_aborted(b);
    if (!w.draining) {
      fault(what, ": the mask 0x", std::hex, w.mask, std::dec, " names lane ",
            std::countr_zero(w.mask & w.exited & ~w.deposited), ", which exited instead of joining");
    }
  }
  const std::array<uint64_t, kWarpSize> values = w.values;
  if (--w.readers == 0) {
    w.draining = false;
    w.deposited = w.mask = 0;
    changed.notify_all();
  }
  return values;
}

template <typename T>
uint64_t to_bits(T value) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable_v<T>);
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  return bits;
}

template <typename T>
T from_bits(uint64_t bits) {
  T value;
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

// The value of lane `source` (within the caller's `width`-lane segment), which must be in the mask.
template <typename T>
T shuffle(uint32_t mask, T value, unsigned source, const char* what) {
  const auto values = exchange(mask, to_bits(value), what);
  if (!(mask >> source & 1u)) fault(what, ": lane ", self.lane, " reads lane ", source, ", which is not in the mask");
  return from_bits<T>(values[source]);
}

inline unsigned segment_start(int width) { return self.lane & ~static_cast<unsigned>(width - 1); }

inline void check_width(int width, const char* what) {
  if (width <= 0 || width > static_cast<int>(kWarpSize) || (width & (width - 1))) {
    fault(what, ": width ", width, " is not a power of two in [1, 32]");
  }
}

// --- shared memory ------------------------------------------------------------------------------------------

template <typename T>
T* dynamic_shared() {
  return reinterpret_cast<T*>(current_block().shared.data());
}

// The block's copy of a static __shared__ array, identified by a tag unique to its declaration.
template <typename T>
T* static_shared(const void* tag, size_t count) {
  Block& b = current_block();
  std::lock_guard<std::mutex> lock(b.mutex);
  auto found = b.static_offsets.find(tag);
  if (found == b.static_offsets.end()) {
    const size_t offset = (b.used_bytes + 15) / 16 * 16, bytes = count * sizeof(T);
    if (offset + bytes > b.shared_limit) {
      fault("shared memory: ", offset + bytes, " bytes (static and dynamic) exceed the kernel's limit of ",
            b.shared_limit);
    }
    FASTMIM_SIMT_UNPOISON(b.shared.data() + offset, bytes);
    std::memset(b.shared.data() + offset, 0xFF, bytes);
    b.used_bytes = offset + bytes;
    found = b.static_offsets.emplace(tag, offset).first;
  }
  return reinterpret_cast<T*>(b.shared.data() + found->second);
}

// --- launching ------------------------------------------------------------------------------------------------

// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes), per kernel.
inline std::map<const void*, size_t>& opt_in_shared() {
  static std::map<const void*, size_t> value;
  return value;
}

inline void set_max_dynamic_shared(const void* kernel, size_t bytes) {
  if (bytes > limits().max_opt_in_shared) {
    fault("cudaFuncSetAttribute: ", bytes, " bytes of dynamic shared memory exceed the opt-in maximum of ",
          limits().max_opt_in_shared);
  }
  opt_in_shared()[kernel] = bytes;
}

inline void check_launch(const char* name, dim3 grid, dim3 block, size_t dynamic_bytes, size_t shared_limit) {
  const Limits& l = limits();
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (threads == 0 || threads > l.max_block_threads || block.x > l.max_block_x || block.y > l.max_block_y ||
      block.z > l.max_block_z) {
    fault("launch of ", name, ": invalid configuration, block (", block.x, ", ", block.y, ", ", block.z,
          ") exceeds the limits (", l.max_block_threads, " threads; x, y ≤ 1024, z ≤ 64)");
  }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > l.max_grid_x || grid.y > l.max_grid_y ||
      grid.z > l.max_grid_z) {
    fault("launch of ", name, ": invalid configuration, grid (", grid.x, ", ", grid.y, ", ", grid.z,
          ") exceeds the limits (x < 2^31, y ≤ ", l.max_grid_y, ", z ≤ ", l.max_grid_z, ") or is empty");
  }
  if (dynamic_bytes > shared_limit) {
    fault("launch of ", name, ": ", dynamic_bytes, " bytes of dynamic shared memory exceed the kernel's limit of ",
          shared_limit, " (opt in with cudaFuncSetAttribute)");
  }
}

inline uint64_t next_launch_seed() {
  static std::atomic<uint64_t> launches{0};
  return limits().block_order_seed * 0x9E3779B97F4A7C15ull + launches++;
}

inline uint3 unflatten(uint64_t flat, dim3 grid) {
  return {static_cast<unsigned>(flat % grid.x), static_cast<unsigned>(flat / grid.x % grid.y),
          static_cast<unsigned>(flat / (uint64_t{grid.x} * grid.y))};
}

// Runs `body` as every thread of every block. Threads live for the whole launch and walk the blocks in the
// same shuffled order; a std::barrier between blocks resets the block state.
inline void run(const char* name, dim3 grid, dim3 block, size_t dynamic_bytes, size_t shared_limit,
                const std::function<void()>& body) {
  check_launch(name, grid, block, dynamic_bytes, shared_limit);
  const unsigned threads = block.x * block.y * block.z;
  std::vector<uint64_t> order(uint64_t{grid.x} * grid.y * grid.z);
  std::iota(order.begin(), order.end(), uint64_t{0});
  std::shuffle(order.begin(), order.end(), std::mt19937_64(next_launch_seed()));

  Block b;
  b.shared.resize(std::max<size_t>(shared_limit, 16));
  b.shared_limit = shared_limit;
  b.dynamic_bytes = dynamic_bytes;
  size_t next = 0;
  bool stop = false;
  auto advance = [&]() noexcept {
    stop = stop || b.aborted || ++next == order.size();
    if (!stop) b.start(threads);
  };
  b.start(threads);
  std::barrier<decltype(advance)> between_blocks(threads, advance);

  auto worker = [&](unsigned rank) {
    self = ThreadState{&b, rank, rank % kWarpSize, rank / kWarpSize};
    threadIdx = {rank % block.x, rank / block.x % block.y, rank / (block.x * block.y)};
    blockDim = block;
    gridDim = grid;
    while (!stop) {
      blockIdx = unflatten(order[next], grid);
      try {
        body();
      } catch (const Aborted&) {
      } catch (...) {
        b.record(std::current_exception());
      }
      {
        std::lock_guard<std::mutex> lock(b.mutex);
        ++b.exited;
        b.warps[self.warp].exited |= 1u << self.lane;
        b.changed.notify_all();  // a thread waiting at __syncthreads learns that this one will never come
        b.warp_changed[self.warp].notify_all();  // and a lane waiting in an exchange that names it
      }
      between_blocks.arrive_and_wait();
    }
    self = ThreadState{};
  };
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (unsigned rank = 0; rank < threads; ++rank) pool.emplace_back(worker, rank);
  for (std::thread& t : pool) t.join();
  if (b.error) {
    try {
      std::rethrow_exception(b.error);
    } catch (const Fault& f) {
      throw Fault(std::string("kernel ") + name + ": " + f.what());
    }
  }
}

// FASTMIM_LAUNCH(kernel, grid, block, smem, stream)(args...): the kernel's parameters are converted once, as
// a real launch copies them into constant memory, and every thread reads the same copies.
template <typename... Params>
class Launch {
 public:
  Launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, const char* name)
      : kernel_(kernel), grid_(grid), block_(block), shared_bytes_(shared_bytes), name_(name) {}

  template <typename... Args>
  void operator()(Args&&... args) const {
    const std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
    const auto& opt_in = opt_in_shared();
    const auto found = opt_in.find(reinterpret_cast<const void*>(kernel_));
    const size_t limit = found == opt_in.end() ? limits().default_shared : found->second;
    run(name_, grid_, block_, shared_bytes_, limit, [&] { std::apply(kernel_, params); });
  }

 private:
  void (*kernel_)(Params...);
  dim3 grid_, block_;
  size_t shared_bytes_;
  const char* name_;
};

template <typename... Params>
Launch<Params...> launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, const char* name) {
  return Launch<Params...>(kernel, grid, block, shared_bytes, name);
}

// A vector access of `bytes` at p: a GPU faults on a misaligned one.
inline void check_aligned(const void* p, size_t bytes, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % bytes != 0) {
    fault("misaligned address: a ", bytes, "-byte ", what, " at ", p);
  }
}

[[noreturn]] inline void device_assert_failed(const char* condition, const char* message, const char* file,
                                              int line) {
  fault("device-side assertion `", condition, "` failed at ", file, ":", line, ": ", message);
}

}  // namespace fastmim::simt

// --- the device intrinsics the kernels use ------------------------------------------------------------------------

inline void __syncthreads() { fastmim::simt::syncthreads(); }

template <typename T>
T __shfl_sync(uint32_t mask, T value, int source, int width = 32) {
  fastmim::simt::check_width(width, "__shfl_sync");
  const unsigned lane = fastmim::simt::segment_start(width) + (static_cast<unsigned>(source) & (width - 1));
  return fastmim::simt::shuffle(mask, value, lane, "__shfl_sync");
}

template <typename T>
T __shfl_xor_sync(uint32_t mask, T value, int lane_mask, int width = 32) {
  fastmim::simt::check_width(width, "__shfl_xor_sync");
  const unsigned lane = fastmim::simt::self.lane ^ static_cast<unsigned>(lane_mask);
  const bool outside = lane / width != fastmim::simt::self.lane / width;  // CUDA: the caller's own value
  return fastmim::simt::shuffle(mask, value, outside ? fastmim::simt::self.lane : lane, "__shfl_xor_sync");
}

template <typename T>
T __shfl_down_sync(uint32_t mask, T value, unsigned delta, int width = 32) {
  fastmim::simt::check_width(width, "__shfl_down_sync");
  const unsigned lane = fastmim::simt::self.lane + delta;
  const bool outside = lane >= fastmim::simt::segment_start(width) + width;
  return fastmim::simt::shuffle(mask, value, outside ? fastmim::simt::self.lane : lane, "__shfl_down_sync");
}

template <typename T>
T __shfl_up_sync(uint32_t mask, T value, unsigned delta, int width = 32) {
  fastmim::simt::check_width(width, "__shfl_up_sync");
  const unsigned lane = fastmim::simt::self.lane - delta;
  const bool outside = delta > fastmim::simt::self.lane - fastmim::simt::segment_start(width);
  return fastmim::simt::shuffle(mask, value, outside ? fastmim::simt::self.lane : lane, "__shfl_up_sync");
}

inline uint32_t __ballot_sync(uint32_t mask, int predicate) {
  const auto values = fastmim::simt::exchange(mask, predicate != 0, "__ballot_sync");
  uint32_t ballot = 0;
  for (unsigned lane = 0; lane < fastmim::simt::kWarpSize; ++lane) {
    if ((mask >> lane & 1u) && values[lane]) ballot |= 1u << lane;
  }
  return ballot;
}

inline void __syncwarp(uint32_t mask = 0xffffffffu) { fastmim::simt::exchange(mask, 0, "__syncwarp"); }

template <typename T>
T __ldg(const T* p) {
  return *p;
}

template <typename T>
T atomicAdd(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value);
}

template <typename T>
T atomicOr(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_or(value);
}

template <typename T>
T atomicMax(T* address, T value) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load();
  while (old < value && !ref.compare_exchange_weak(old, value)) {
  }
  return old;
}

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __saturatef(float x) { return std::clamp(x, 0.0f, 1.0f); }
inline int __popc(unsigned x) { return std::popcount(x); }
inline int __ffs(int x) { return x == 0 ? 0 : std::countr_zero(static_cast<unsigned>(x)) + 1; }
