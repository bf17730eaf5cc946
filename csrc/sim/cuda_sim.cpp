// The simulated CUDA execution model (cuda_sim.h, SPEC §8): fibers (ucontext) for the threads of
// a block, a scheduler that runs one at a time in the run's order, barriers and warp shuffles,
// and the poisoning of shared memory and of the driver's buffers.
#include "cuda_sim.h"

#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <exception>
#include <map>
#include <limits>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define RNNFUSED_SIM_ASAN 1
#endif

dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace rnnfused::sim {

namespace {

constexpr size_t kStackBytes = size_t(256) << 10;  // per CUDA thread; ASan frames are large
constexpr int kMaxThreads = 1024;

enum class State { kReady, kBarrier, kShuffle, kSyncwarp, kDone };

struct Fiber {
  ucontext_t context;
  char* stack = nullptr;  // kStackBytes, above a guard page
  int thread = 0;         // threadIdx.x
  State state = State::kDone;
  // At a barrier: where.
  const char* file = nullptr;
  int line = 0;
  // At a shuffle or __syncwarp: its arguments; the result once the warp's lanes have all arrived.
  ShuffleKind kind = ShuffleKind::kIndex;
  unsigned mask = 0;
  uint64_t value = 0, result = 0;
  int lane_arg = 0, width = 32;
  void* fake_stack = nullptr;  // ASan's, while switched out
};

// The state of the launch in progress (one at a time: `lock`).
struct Simulator {
  std::mutex lock;
  std::string order = "forward";
  uint64_t seed = 0;
  uint64_t launches = 0;
  bool logging = false;
  std::vector<Launch> log;

  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  const void* scheduler_stack = nullptr;  // ASan: the scheduler's stack, learnt on the first switch
  size_t scheduler_stack_bytes = 0;
  void* scheduler_fake_stack = nullptr;
  Fiber* current = nullptr;
  const std::function<void()>* body = nullptr;
  std::exception_ptr failure;  // thrown by a thread's body
};

Simulator& sim() {
  static Simulator* s = new Simulator();  // never destroyed: fibers may be parked in it at exit
  return *s;
}

// --- switching -------------------------------------------------------------------------------

void enter_fiber(Simulator& s, Fiber& f) {
  s.current = &f;
  threadIdx = dim3{static_cast<unsigned>(f.thread), 0, 0};
#ifdef RNNFUSED_SIM_ASAN
  __sanitizer_start_switch_fiber(&s.scheduler_fake_stack, f.stack, kStackBytes);
#endif
  swapcontext(&s.scheduler, &f.context);
#ifdef RNNFUSED_SIM_ASAN
  __sanitizer_finish_switch_fiber(s.scheduler_fake_stack, nullptr, nullptr);
#endif
  s.current = nullptr;
}

// From a thread back to the scheduler; returns when the scheduler resumes the thread.
void leave_fiber(Simulator& s, Fiber& f) {
#ifdef RNNFUSED_SIM_ASAN
  __sanitizer_start_switch_fiber(&f.fake_stack, s.scheduler_stack, s.scheduler_stack_bytes);
#endif
  swapcontext(&f.context, &s.scheduler);
#ifdef RNNFUSED_SIM_ASAN
  __sanitizer_finish_switch_fiber(f.fake_stack, &s.scheduler_stack, &s.scheduler_stack_bytes);
#endif
}

void fiber_main() {
  Simulator& s = sim();
#ifdef RNNFUSED_SIM_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &s.scheduler_stack, &s.scheduler_stack_bytes);
#endif
  Fiber& f = *s.current;
  try {
    (*s.body)();
  } catch (...) {
    if (!s.failure) s.failure = std::current_exception();
  }
  f.state = State::kDone;
#ifdef RNNFUSED_SIM_ASAN
  __sanitizer_start_switch_fiber(nullptr, s.scheduler_stack, s.scheduler_stack_bytes);
#endif
  setcontext(&s.scheduler);
}

void make_fibers(Simulator& s, int count) {
  while (static_cast<int>(s.fibers.size()) < count) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    void* base = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    TORCH_CHECK(base != MAP_FAILED, "rnnfused CUDA simulator: cannot map a thread's stack");
    mprotect(base, page, PROT_NONE);  // an overflow faults instead of writing another stack
    Fiber f;
    f.stack = static_cast<char*>(base) + page;
    s.fibers.push_back(f);
  }
}

// --- the thread side -------------------------------------------------------------------------

Fiber& running(const char* what) {
  Simulator& s = sim();
  TORCH_CHECK(s.current != nullptr, "rnnfused CUDA simulator: ", what,
              " called outside a simulated kernel");
  return *s.current;
}

// --- the scheduler ---------------------------------------------------------------------------

std::string describe(const Fiber& f) {
  std::ostringstream os;
  os << "thread " << f.thread;
  switch (f.state) {
    case State::kReady: os << " (running)"; break;
    case State::kDone: os << " (ended)"; break;
    case State::kBarrier: os << " (at the __syncthreads() of " << f.file << ":" << f.line << ")"; break;
    case State::kShuffle: os << " (at a shuffle, mask 0x" << std::hex << f.mask << std::dec << ")"; break;
    case State::kSyncwarp: os << " (at __syncwarp, mask 0x" << std::hex << f.mask << std::dec << ")"; break;
  }
  return os.str();
}

[[noreturn]] void fail(const std::string& kernel, int64_t block, const std::string& what) {
  TORCH_CHECK(false, "rnnfused CUDA simulator: kernel ", kernel, ", block ", block, " (thread order ",
              sim().order, "): ", what);
}

std::vector<int> ordering(Simulator& s, int n, uint64_t salt) {
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  if (s.order == "reverse") {
    std::reverse(order.begin(), order.end());
  } else if (s.order == "shuffle") {
    std::mt19937_64 gen(s.seed * 0x9E3779B97F4A7C15ull + salt);
    std::shuffle(order.begin(), order.end(), gen);
  }
  return order;
}

// The lane another lane of a shuffle reads, or -1 for its own value.
int source_lane(const Fiber& f, int lane) {
  const int width = f.width, base = lane - lane % width, pos = lane % width;
  switch (f.kind) {
    case ShuffleKind::kIndex: return base + ((f.lane_arg % width) + width) % width;
    case ShuffleKind::kUp: return pos - f.lane_arg < 0 ? -1 : lane - f.lane_arg;
    case ShuffleKind::kDown: return pos + f.lane_arg >= width ? -1 : lane + f.lane_arg;
    case ShuffleKind::kXor: {
      const int src = lane ^ f.lane_arg;
      return src - src % width != base ? -1 : src;
    }
  }
  return -1;
}

// Completes every warp-level operation whose lanes have all arrived; returns how many threads it
// released. A lane named by a mask that can no longer arrive is an error.
int resolve_warps(Simulator& s, int n, const std::string& kernel, int64_t block) {
  int released = 0;
  for (int i = 0; i < n; ++i) {
    Fiber& f = s.fibers[i];
    if (f.state != State::kShuffle && f.state != State::kSyncwarp) continue;
    const int warp = i / 32, lane = i % 32;
    const char* what = f.state == State::kShuffle ? "shuffle" : "__syncwarp";
    if (!(f.mask >> lane & 1u)) {
      std::ostringstream os;
      os << describe(f) << " calls a " << what << " whose mask 0x" << std::hex << f.mask
         << " leaves out its own lane " << std::dec << lane;
      fail(kernel, block, os.str());
    }
    bool complete = true;
    for (int l = 0; l < 32; ++l) {
      if (!(f.mask >> l & 1u)) continue;
      const int other = warp * 32 + l;
      std::ostringstream os;
      if (other >= n) {
        os << describe(f) << ": the " << what << " mask 0x" << std::hex << f.mask << std::dec
           << " names lane " << l << ", which does not exist in a block of " << n << " threads";
        fail(kernel, block, os.str());
      }
      const Fiber& g = s.fibers[other];
      if (g.state == State::kReady) {
        complete = false;
        continue;
      }
      if (g.state != f.state || g.mask != f.mask) {
        os << describe(f) << ": the " << what << " mask 0x" << std::hex << f.mask << std::dec
           << " names lane " << l << ", which never arrives: " << describe(g);
        fail(kernel, block, os.str());
      }
    }
    if (!complete) continue;
    // Every lane of the mask is here: exchange, then release them all.
    for (int l = 0; l < 32; ++l) {
      if (!(f.mask >> l & 1u)) continue;
      Fiber& g = s.fibers[warp * 32 + l];
      if (g.state == State::kShuffle) {
        const int src = source_lane(g, l);
        if (src >= 0 && !(g.mask >> src & 1u)) {
          std::ostringstream os;
          os << describe(g) << " reads lane " << src << ", which is not in its shuffle mask 0x"
             << std::hex << g.mask;
          fail(kernel, block, os.str());
        }
        g.result = src < 0 ? g.value : s.fibers[warp * 32 + src].value;
      }
    }
    for (int l = 0; l < 32; ++l) {
      if (!(f.mask >> l & 1u)) continue;
      s.fibers[warp * 32 + l].state = State::kReady;
      ++released;
    }
  }
  return released;
}

// --- __shared__ memory -------------------------------------------------------------------------

// A kernel's __shared__ arrays: its function-local statics, which the symbol table names
// _ZZ<the kernel's encoding>E<name> when the kernel is _Z<encoding>.
struct SharedArray {
  char* at;
  size_t bytes;
};

// The symbol table of one loaded module: its functions by address, its function-local statics.
struct ModuleSymbols {
  std::map<uintptr_t, std::string> functions;
  std::vector<std::pair<std::string, SharedArray>> statics;
};

ModuleSymbols read_symbols(const char* path, uintptr_t base) {
  ModuleSymbols out;
  const int fd = open(path, O_RDONLY);
  TORCH_CHECK(fd >= 0, "rnnfused CUDA simulator: cannot open ", path, " to read its symbols");
  struct stat st;
  fstat(fd, &st);
  void* map = mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  TORCH_CHECK(map != MAP_FAILED, "rnnfused CUDA simulator: cannot map ", path);
  const char* file = static_cast<const char*>(map);
  const auto* eh = reinterpret_cast<const Elf64_Ehdr*>(file);
  const auto* sections = reinterpret_cast<const Elf64_Shdr*>(file + eh->e_shoff);
  for (int i = 0; i < eh->e_shnum; ++i) {
    if (sections[i].sh_type != SHT_SYMTAB) continue;
    const auto* syms = reinterpret_cast<const Elf64_Sym*>(file + sections[i].sh_offset);
    const char* names = file + sections[sections[i].sh_link].sh_offset;
    const size_t count = sections[i].sh_size / sizeof(Elf64_Sym);
    for (size_t k = 0; k < count; ++k) {
      const Elf64_Sym& sym = syms[k];
      if (sym.st_shndx == SHN_UNDEF || sym.st_value == 0) continue;
      const char* name = names + sym.st_name;
      if (ELF64_ST_TYPE(sym.st_info) == STT_FUNC) {
        out.functions.emplace(base + sym.st_value, name);
      } else if (ELF64_ST_TYPE(sym.st_info) == STT_OBJECT && std::strncmp(name, "_ZZ", 3) == 0) {
        out.statics.push_back({name, SharedArray{reinterpret_cast<char*>(base + sym.st_value),
                                                 static_cast<size_t>(sym.st_size)}});
      }
    }
  }
  munmap(map, static_cast<size_t>(st.st_size));
  return out;
}

const std::vector<SharedArray>& shared_arrays(const void* kernel, const std::string& name) {
  static std::map<std::string, ModuleSymbols> modules;
  static std::map<const void*, std::vector<SharedArray>> kernels;
  auto known = kernels.find(kernel);
  if (known != kernels.end()) return known->second;
  Dl_info info;
  TORCH_CHECK(dladdr(kernel, &info) != 0 && info.dli_fname != nullptr,
              "rnnfused CUDA simulator: cannot find the module of kernel ", name);
  auto module = modules.find(info.dli_fname);
  if (module == modules.end()) {
    module = modules.emplace(info.dli_fname, read_symbols(info.dli_fname,
                                                          reinterpret_cast<uintptr_t>(info.dli_fbase)))
                 .first;
  }
  const ModuleSymbols& symbols = module->second;
  const auto function = symbols.functions.find(reinterpret_cast<uintptr_t>(kernel));
  TORCH_CHECK(function != symbols.functions.end() && function->second.rfind("_Z", 0) == 0,
              "rnnfused CUDA simulator: kernel ", name, " is not in the symbol table of ",
              info.dli_fname, " (a stripped build?); its __shared__ memory cannot be poisoned");
  const std::string prefix = "_ZZ" + function->second.substr(2) + "E";
  std::vector<SharedArray> arrays;
  for (const auto& [static_name, array] : symbols.statics) {
    if (static_name.rfind(prefix, 0) == 0) arrays.push_back(array);
  }
  return kernels.emplace(kernel, std::move(arrays)).first->second;
}

void poison_shared(const std::vector<SharedArray>& arrays) {
  for (const SharedArray& a : arrays) std::memset(a.at, 0xFF, a.bytes);
}

void run_block(Simulator& s, const std::string& kernel, const std::vector<SharedArray>& shared,
               int64_t block, int n) {
  poison_shared(shared);
  for (int i = 0; i < n; ++i) {
    Fiber& f = s.fibers[i];
#ifdef RNNFUSED_SIM_ASAN
    // A thread abandoned by an earlier failed run may have left its frames poisoned.
    __asan_unpoison_memory_region(f.stack, kStackBytes);
#endif
    f.thread = i;
    f.state = State::kReady;
    f.fake_stack = nullptr;
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack;
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = nullptr;
    makecontext(&f.context, fiber_main, 0);
  }
  for (uint64_t round = 0;; ++round) {
    for (int i : ordering(s, n, (s.launches << 32) ^ (static_cast<uint64_t>(block) << 12) ^ round)) {
      if (s.fibers[i].state == State::kReady) enter_fiber(s, s.fibers[i]);
      if (s.failure) {
        std::exception_ptr e = s.failure;
        s.failure = nullptr;
        std::rethrow_exception(e);
      }
    }
    if (resolve_warps(s, n, kernel, block) > 0) continue;
    int done = 0, at_barrier = 0;
    const Fiber* first = nullptr;
    for (int i = 0; i < n; ++i) {
      const Fiber& f = s.fibers[i];
      if (f.state == State::kDone) ++done;
      if (f.state == State::kBarrier) {
        ++at_barrier;
        if (first == nullptr) first = &f;
      }
    }
    if (done == n) return;
    if (at_barrier == 0) fail(kernel, block, "no thread can go on (internal)");
    // Every thread must wait at the same barrier: one that ended, or waits at a shuffle for a
    // lane held by the barrier, never reaches it (a hang on a GPU).
    for (int i = 0; i < n; ++i) {
      const Fiber& f = s.fibers[i];
      if (f.state != State::kBarrier) {
        fail(kernel, block,
             describe(f) + " never reaches the __syncthreads() that " + describe(*first) +
                 " waits at");
      }
      if (f.line != first->line || std::strcmp(f.file, first->file) != 0) {
        fail(kernel, block, describe(f) + " and " + describe(*first) +
                                " wait at different __syncthreads() calls");
      }
    }
    for (int i = 0; i < n; ++i) s.fibers[i].state = State::kReady;
  }
}

}  // namespace

void syncthreads(const char* file, int line) {
  Fiber& f = running("__syncthreads()");
  f.state = State::kBarrier;
  f.file = file;
  f.line = line;
  leave_fiber(sim(), f);
}

void syncwarp(unsigned mask) {
  Fiber& f = running("__syncwarp()");
  f.state = State::kSyncwarp;
  f.mask = mask;
  leave_fiber(sim(), f);
}

uint64_t shuffle(ShuffleKind kind, unsigned mask, uint64_t bits, int lane_arg, int width) {
  Fiber& f = running("a warp shuffle");
  TORCH_CHECK(width > 0 && width <= 32 && (width & (width - 1)) == 0,
              "rnnfused CUDA simulator: shuffle width ", width, " is not a power of two <= 32");
  f.state = State::kShuffle;
  f.kind = kind;
  f.mask = mask;
  f.value = bits;
  f.lane_arg = lane_arg;
  f.width = width;
  leave_fiber(sim(), f);
  return f.result;
}

void launch(const std::string& name, const void* kernel, int64_t grid, int block,
            size_t shared_bytes, const std::function<void()>& body) {
  Simulator& s = sim();
  const std::lock_guard<std::mutex> guard(s.lock);
  TORCH_CHECK(s.current == nullptr, "rnnfused CUDA simulator: a kernel launched from a kernel");
  TORCH_CHECK(block > 0 && block <= kMaxThreads, "rnnfused CUDA simulator: kernel ", name,
              " launched with ", block, " threads per block (1 to ", kMaxThreads, ")");
  TORCH_CHECK(shared_bytes == 0, "rnnfused CUDA simulator: kernel ", name, " asks for ",
              shared_bytes, " bytes of dynamic shared memory, which the simulator does not model");
  TORCH_CHECK(grid > 0 && grid <= std::numeric_limits<int32_t>::max(),
              "rnnfused CUDA simulator: kernel ", name, " launched with a grid of ", grid);
  if (s.logging) s.log.push_back(Launch{name, grid, block});
  const std::vector<SharedArray>& shared = shared_arrays(kernel, name);
  make_fibers(s, block);
  blockDim = dim3{static_cast<unsigned>(block), 1, 1};
  gridDim = dim3{static_cast<unsigned>(grid), 1, 1};
  s.body = &body;
  s.failure = nullptr;
  // The blocks in the run's order too (a grid of more blocks than the orders can matter for is
  // not expected at the sizes the tests use; a shuffle of 2^20 indices is still cheap).
  const std::vector<int> blocks = ordering(s, static_cast<int>(grid), s.launches * 7919);
  try {
    for (int b : blocks) {
      blockIdx = dim3{static_cast<unsigned>(b), 0, 0};
      run_block(s, name, shared, b, block);
    }
  } catch (...) {
    s.body = nullptr;
    ++s.launches;
    throw;
  }
  s.body = nullptr;
  ++s.launches;
}

std::string kernel_name_from(const char* signature) {
  const std::string pretty = signature, key = "kKernel = ";
  const auto at = pretty.find(key);
  if (at == std::string::npos) return pretty;
  const std::string tail = pretty.substr(at + key.size());
  return tail.substr(0, tail.find_first_of(";]"));
}

at::Tensor poisoned_empty(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  at::Tensor t = at::empty(sizes, opts);
  if (t.numel() == 0) return t;
  if (at::isFloatingType(t.scalar_type())) {
    t.fill_(std::numeric_limits<double>::quiet_NaN());
  } else {
    std::memset(t.data_ptr(), 0xFF, t.nbytes());
  }
  return t;
}

void set_thread_order(const std::string& order, uint64_t seed) {
  TORCH_CHECK_VALUE(order == "forward" || order == "reverse" || order == "shuffle",
                    "rnnfused CUDA simulator: thread order must be 'forward', 'reverse' or "
                    "'shuffle', got '", order, "'");
  Simulator& s = sim();
  const std::lock_guard<std::mutex> guard(s.lock);
  s.order = order;
  s.seed = seed;
}

std::string thread_order() {
  Simulator& s = sim();
  const std::lock_guard<std::mutex> guard(s.lock);
  return s.order == "shuffle" ? s.order + ":" + std::to_string(s.seed) : s.order;
}

void set_launch_logging(bool on) {
  Simulator& s = sim();
  const std::lock_guard<std::mutex> guard(s.lock);
  s.logging = on;
}

std::vector<Launch> launch_log(bool clear) {
  Simulator& s = sim();
  const std::lock_guard<std::mutex> guard(s.lock);
  std::vector<Launch> out = s.log;
  if (clear) s.log.clear();
  return out;
}

}  // namespace rnnfused::sim
