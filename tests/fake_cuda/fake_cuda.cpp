// A stand-in for the NVIDIA driver library (libcuda.so.1) for machines without a
// GPU: the CUDA driver calls tensorstream makes, carried out on host memory, with
// the checks a real GPU would not make loudly. tests/fake_cuda/mod.rs builds it
// with g++ and runs the CUDA tests and the command line against it (through
// LD_LIBRARY_PATH), so CI exercises the CUDA path's ordering, bounds and clean-up
// without a GPU. It is a test double: it says nothing about speed, and the GPU check
// script still runs the same tests on a real driver.
//
// What it models:
//   - one or more devices (FAKE_CUDA_DEVICES, default 1) with FAKE_CUDA_MEM bytes
//     each (default 4 GiB); device memory is host memory from malloc;
//   - a current context per thread: calls that need one fail with
//     CUDA_ERROR_INVALID_CONTEXT on a thread that has not made one current;
//   - streams, each run by its own worker thread, so copies and kernels really
//     run after the call that queued them returns (FAKE_CUDA_DELAY_US delays each
//     queued operation, widening every race); events recorded on them; a legacy
//     default stream that does not wait for non-blocking streams;
//   - host-to-device copies from pinned memory (cuMemHostAlloc or
//     cuMemHostRegister) run on the stream; from pageable memory they run at once,
//     after the stream's earlier work, as the driver does;
//   - a host-to-device copy whose source is partly pinned (runs from one pinned or
//     registered range into the next, or into pageable memory) is refused with
//     CUDA_ERROR_INVALID_VALUE, as a real driver refused a copy across two adjacent
//     registrations (the pageable case is a guess, on the strict side);
//   - cuPointerGetAttribute: the context, memory type, device and allocation range of
//     a pointer into a device allocation or pinned host memory (none is managed), an
//     error for any other address; cuCtxSynchronize;
//   - cuMemHostRegister at page granularity: an overlap with a registered range is
//     CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED, memory that is not writable needs
//     CU_MEMHOSTREGISTER_READ_ONLY; FAKE_CUDA_CC=7.5 sets the compute capability the
//     devices report (9.0 by default); FAKE_CUDA_NO_REGISTER=1 makes the device report
//     no support and refuse;
//   - the conversion kernels of kernels/convert.cu, compiled here for the host and
//     run over the launch's whole grid, one simulated thread after another;
//   - FAKE_CUDA_FAIL=name:n[:code],... makes the n-th call of driver function
//     `name` fail (with `code`, else a likely error for that call);
//   - FAKE_CUDA_ASYNC_FAULT=n: the n-th queued copy or kernel faults while it runs,
//     after the call that queued it returned: from then on every call fails with
//     CUDA_ERROR_ILLEGAL_ADDRESS, as after a real device fault (reported once no
//     stream is in the middle of an operation: a faulted device stops).
//
// What it checks (each failure is a "violation": printed to stderr with the
// prefix "fake-cuda: VIOLATION:", counted, and from then on every call returns
// CUDA_ERROR_ILLEGAL_ADDRESS, as after a real device fault):
//   - a copy's or kernel's device ranges lie inside one live allocation, a kernel's
//     source and destination do not overlap;
//   - pinned host memory a queued copy reads is not changed, unregistered or freed
//     before the copy runs (the bytes are hashed when the copy is queued and again
//     when it runs);
//   - device memory a queued copy or kernel uses is not freed before it runs;
//   - no two streams' unfinished work uses the same device memory, one writing it;
//   - work goes only to streams, events, modules and memory of the context
//     current on the calling thread, and no context is released for the last
//     time while its memory or streams are still live.
// FAKE_CUDA_REPORT=path: at exit, key=value lines: violations, counts of calls and
// bytes, the most work queued and the most streams busy at once, and what is still
// allocated (device memory, pinned memory, registrations, streams, events, modules,
// context references).

#include "../../kernels/convert.cu"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <iterator>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;

namespace {

enum : CUresult {
    SUCCESS = 0,
    INVALID_VALUE = 1,
    OUT_OF_MEMORY = 2,
    NOT_INITIALIZED = 3,
    NO_DEVICE = 100,
    INVALID_DEVICE = 101,
    INVALID_IMAGE = 200,
    INVALID_CONTEXT = 201,
    INVALID_HANDLE = 400,
    NOT_FOUND = 500,
    NOT_READY = 600,
    ILLEGAL_ADDRESS = 700,
    HOST_MEMORY_ALREADY_REGISTERED = 712,
    HOST_MEMORY_NOT_REGISTERED = 713,
    LAUNCH_FAILED = 719,
    NOT_SUPPORTED = 801,
    UNKNOWN = 999,
};

const uintptr_t PAGE = 4096;

struct Kernel {
    const char* name;
    unsigned src_size, dst_size;
    void (*run)(const unsigned char*, unsigned char*, unsigned long long, unsigned long long);
};

// The kernels as the device runs them: every thread of the grid in turn; the
// 1-byte-to-16-bit ones look elements up in a table, as they do in shared memory.
template <typename Op>
void run_kernel(const unsigned char* src, unsigned char* dst, unsigned long long n,
                unsigned long long threads) {
    if constexpr (Op::S == 1 && Op::D == 2) {
        tsconv::u32 table[256];
        tsconv::fill_table<Op>(table, 0u, 1u);
        for (unsigned long long t = 0; t < threads; ++t)
            tsconv::convert_range<Op>(src, dst, n, t, threads, tsconv::Table{table});
    } else {
        for (unsigned long long t = 0; t < threads; ++t)
            tsconv::convert_range<Op>(src, dst, n, t, threads, tsconv::Direct<Op>{});
    }
}

const Kernel KERNELS[] = {
#define TS_FAKE_KERNEL(NAME, OP) \
    {#NAME, tsconv::OP::S, tsconv::OP::D, run_kernel<tsconv::OP>},
    TS_CONVERT_PAIRS(TS_FAKE_KERNEL)
#undef TS_FAKE_KERNEL
};

struct Context {
    int device;
    int refs = 0;
};

struct Event {
    Context* ctx = nullptr;
    uint64_t recorded = 0;  // generation of the latest record
    uint64_t done = 0;      // generation of the latest record that completed
    bool live = true;
};

enum class OpKind { Copy, Launch, Record, Wait };

struct Op {
    OpKind kind;
    // Copy: host [src, src + len) to device dst; `hash` of the source when queued.
    // Launch: kernel `k` from device src to device dst over n elements, `threads`.
    const unsigned char* src = nullptr;
    uintptr_t dst = 0;
    size_t len = 0;
    uint64_t hash = 0;
    const Kernel* k = nullptr;
    unsigned long long n = 0, threads = 0;
    // Record / Wait
    Event* ev = nullptr;
    uint64_t gen = 0;
};

struct Stream {
    Context* ctx = nullptr;
    std::deque<Op> queue;  // the front is the operation running, if `busy`
    bool busy = false;
    bool blocking = false;  // created without CU_STREAM_NON_BLOCKING
    bool destroyed = false;
};

struct HostRange {
    size_t len;
    bool registered;  // cuMemHostRegister, else cuMemHostAlloc
};

struct DeviceAlloc {
    size_t len;
    Context* ctx;
};

// A kernel as cuModuleGetFunction hands it out: of one module, in one context.
struct Function {
    const Kernel* k;
    uintptr_t module;
    Context* ctx;
};

struct State {
    std::mutex mu;
    std::condition_variable cv;
    bool initialized = false;
    int devices = 1;
    size_t device_mem = size_t(4) << 30;
    bool no_register = false;
    int cc = 90;  // compute capability x 10 (FAKE_CUDA_CC=7.5 gives 75)
    unsigned delay_us = 0;
    uint64_t fault_at = 0, ran = 0;  // FAKE_CUDA_ASYNC_FAULT; queued copies and kernels run
    std::string report;
    std::map<std::string, std::pair<uint64_t, CUresult>> fail_at;  // name -> (n, code)
    std::map<std::string, uint64_t> calls;
    std::vector<Context*> contexts;
    std::map<uintptr_t, DeviceAlloc> device_allocs;
    size_t device_bytes = 0;
    std::map<uintptr_t, HostRange> host;  // pinned host ranges by base address
    size_t registered_bytes = 0, max_registered_bytes = 0;
    std::set<Stream*> streams;  // live (not destroyed) streams
    std::set<Stream*> running;  // streams whose worker still runs (destroyed ones drain)
    std::set<Event*> events;    // live events
    std::map<uintptr_t, Context*> modules;
    std::vector<Function*> functions;
    CUresult sticky = SUCCESS;
    uint64_t violations = 0;
    uint64_t htod_pinned = 0, htod_pageable = 0, htod_bytes = 0, htod_2d = 0, dtoh = 0, launches = 0,
             registrations = 0;
    size_t max_queued = 0, busy_streams = 0, max_busy_streams = 0;
};

State& S() {
    // Never destroyed: stream workers may outlive static destructors.
    static State* s = new State;
    return *s;
}

thread_local Context* t_ctx = nullptr;

uint64_t hash_bytes(const unsigned char* p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        std::memcpy(&w, p + i, 8);
        h = (h ^ w) * 1099511628211ull;
        h ^= h >> 29;
    }
    for (; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

// Callers hold the lock.
void violate(const char* fmt, ...) {
    State& s = S();
    std::va_list ap;
    va_start(ap, fmt);
    char msg[512];
    std::vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    std::fprintf(stderr, "fake-cuda: VIOLATION: %s\n", msg);
    s.violations++;
    s.sticky = ILLEGAL_ADDRESS;
    s.cv.notify_all();
}

// The call's result once any fault has stopped the device: SUCCESS, or the fault
// once no stream is in the middle of an operation. Lock held.
CUresult settled(std::unique_lock<std::mutex>& lock) {
    State& s = S();
    if (s.sticky != SUCCESS) s.cv.wait(lock, [&] { return s.busy_streams == 0; });
    return s.sticky;
}

// The live device allocation holding [p, p + len), if any. Lock held.
const DeviceAlloc* in_device(uintptr_t p, size_t len) {
    State& s = S();
    auto it = s.device_allocs.upper_bound(p);
    if (it == s.device_allocs.begin()) return nullptr;
    --it;
    if (p >= it->first && p + len >= p && p + len <= it->first + it->second.len) return &it->second;
    return nullptr;
}

// The pinned host range holding [p, p + len), if any. Lock held.
const HostRange* in_pinned(uintptr_t p, size_t len) {
    State& s = S();
    auto it = s.host.upper_bound(p);
    if (it == s.host.begin()) return nullptr;
    --it;
    if (p >= it->first && p + len <= it->first + it->second.len) return &it->second;
    return nullptr;
}

bool overlaps(uintptr_t a, size_t alen, uintptr_t b, size_t blen) {
    return alen > 0 && blen > 0 && a < b + blen && b < a + alen;
}

// Whether [p, p + len) overlaps pinned or registered host memory. Lock held.
bool touches_pinned(uintptr_t p, size_t len) {
    for (auto& [start, r] : S().host)
        if (overlaps(p, len, start, r.len)) return true;
    return false;
}

// Whether an operation not yet finished reads or writes [p, p + len). Lock held.
const char* queued_use(uintptr_t p, size_t len) {
    for (Stream* st : S().running) {
        for (const Op& op : st->queue) {
            if (op.kind == OpKind::Copy &&
                (overlaps((uintptr_t)op.src, op.len, p, len) || overlaps(op.dst, op.len, p, len)))
                return "a queued host-to-device copy";
            if (op.kind == OpKind::Launch &&
                (overlaps((uintptr_t)op.src, op.n * op.k->src_size, p, len) ||
                 overlaps(op.dst, op.n * op.k->dst_size, p, len)))
                return "a queued kernel";
        }
    }
    return nullptr;
}

// Whether [lo, hi) is mapped, and writable throughout unless `read_only` (the
// driver refuses a registration without CU_MEMHOSTREGISTER_READ_ONLY of memory it
// cannot write).
bool mapped(uintptr_t lo, uintptr_t hi, bool read_only) {
    std::FILE* f = std::fopen("/proc/self/maps", "r");
    if (!f) return true;  // cannot tell: allow
    char line[512];
    uintptr_t at = lo;
    while (at < hi && std::fgets(line, sizeof line, f)) {
        unsigned long a = 0, b = 0;
        char perms[8] = {0};
        if (std::sscanf(line, "%lx-%lx %7s", &a, &b, perms) != 3) continue;
        if (b <= at || a > at) continue;
        if (!read_only && perms[1] != 'w') break;
        at = b;
    }
    std::fclose(f);
    return at >= hi;
}

// Counts the call and says whether it is to fail, and how. Lock held.
CUresult injected(const char* name, CUresult likely) {
    State& s = S();
    const uint64_t n = ++s.calls[name];
    auto it = s.fail_at.find(name);
    if (it != s.fail_at.end() && it->second.first == n) return it->second.second ? it->second.second : likely;
    return SUCCESS;
}

// After a fault the device stops: a call reports the error once no stream is in
// the middle of an operation (none touches memory any more).
#define ENTER(NAME, LIKELY)                                                \
    State& s = S();                                                        \
    std::unique_lock<std::mutex> lock(s.mu);                               \
    if (s.sticky != SUCCESS) {                                             \
        s.cv.wait(lock, [&] { return s.busy_streams == 0; });              \
        return s.sticky;                                                   \
    }                                                                      \
    if (CUresult f_ = injected(NAME, LIKELY)) return f_

#define NEED_CONTEXT()                                                   \
    if (!s.initialized) return NOT_INITIALIZED;                          \
    if (t_ctx == nullptr || t_ctx->refs == 0) return INVALID_CONTEXT

void write_report() {
    State& s = S();
    if (s.report.empty()) return;
    std::FILE* f = std::fopen(s.report.c_str(), "w");
    if (!f) return;
    int refs = 0;
    for (Context* c : s.contexts) refs += c->refs;
    size_t host_allocs = 0, host_regs = 0;
    for (auto& [p, r] : s.host) (r.registered ? host_regs : host_allocs)++;
    std::fprintf(f,
                 "violations=%llu\nhtod_pinned=%llu\nhtod_pageable=%llu\nhtod_bytes=%llu\nhtod_2d=%llu\n"
                 "dtoh=%llu\nlaunches=%llu\nregistrations=%llu\nmax_registered_bytes=%zu\n"
                 "max_queued=%zu\nmax_busy_streams=%zu\nlive_device_allocs=%zu\n"
                 "live_host_allocs=%zu\nlive_registrations=%zu\nlive_streams=%zu\n"
                 "live_events=%zu\nlive_modules=%zu\ncontext_refs=%d\n",
                 (unsigned long long)s.violations, (unsigned long long)s.htod_pinned,
                 (unsigned long long)s.htod_pageable, (unsigned long long)s.htod_bytes,
                 (unsigned long long)s.htod_2d,
                 (unsigned long long)s.dtoh, (unsigned long long)s.launches,
                 (unsigned long long)s.registrations, s.max_registered_bytes, s.max_queued,
                 s.max_busy_streams, s.device_allocs.size(), host_allocs, host_regs,
                 s.streams.size(), s.events.size(), s.modules.size(), refs);
    std::fclose(f);
}

void worker(Stream* st) {
    State& s = S();
    std::unique_lock<std::mutex> lock(s.mu);
    for (;;) {
        s.cv.wait(lock, [&] { return !st->queue.empty() || st->destroyed; });
        if (st->queue.empty()) break;  // destroyed and drained
        Op op = st->queue.front();
        st->busy = true;
        s.busy_streams++;
        if (s.busy_streams > s.max_busy_streams) s.max_busy_streams = s.busy_streams;
        if (op.kind == OpKind::Wait) {
            s.cv.wait(lock, [&] { return op.ev->done >= op.gen || s.sticky != SUCCESS; });
        } else if (op.kind != OpKind::Record && s.sticky == SUCCESS) {
            lock.unlock();
            if (s.delay_us) std::this_thread::sleep_for(std::chrono::microseconds(s.delay_us));
            lock.lock();
            if (s.sticky != SUCCESS) {
                // The device stopped while this one waited its turn.
            } else if (++s.ran == s.fault_at) {
                // A device fault while the work runs (as an Xid): the context is lost.
                std::fprintf(stderr, "fake-cuda: injected device fault in queued work #%llu\n",
                             (unsigned long long)s.ran);
                s.sticky = ILLEGAL_ADDRESS;
                s.cv.notify_all();
            } else if (op.kind == OpKind::Copy) {
                if (!in_pinned((uintptr_t)op.src, op.len)) {
                    violate("a queued copy of %zu bytes from %p ran after its pinned source was "
                            "unregistered or freed",
                            op.len, (const void*)op.src);
                } else if (!in_device(op.dst, op.len)) {
                    violate("a queued copy of %zu bytes ran after its device destination was freed",
                            op.len);
                } else {
                    lock.unlock();
                    const bool same = hash_bytes(op.src, op.len) == op.hash;
                    if (same) std::memcpy((void*)op.dst, op.src, op.len);
                    lock.lock();
                    if (!same)
                        violate("the pinned host bytes of a queued copy (%zu bytes at %p) changed "
                                "before the copy ran (staging reused too early?)",
                                op.len, (const void*)op.src);
                }
            } else {
                const size_t in = op.n * op.k->src_size, out = op.n * op.k->dst_size;
                if (!(in_device((uintptr_t)op.src, in) || in_pinned((uintptr_t)op.src, in)) ||
                    !in_device(op.dst, out)) {
                    violate("a queued %s ran after its memory was freed", op.k->name);
                } else {
                    lock.unlock();
                    op.k->run(op.src, (unsigned char*)op.dst, op.n, op.threads);
                    lock.lock();
                }
            }
        }
        if (op.kind == OpKind::Record && op.ev->done < op.gen) op.ev->done = op.gen;
        st->queue.pop_front();
        st->busy = false;
        s.busy_streams--;
        s.cv.notify_all();
    }
    s.running.erase(st);
    delete st;
}

Stream* as_stream(void* h) { return static_cast<Stream*>(h); }

struct Access {
    uintptr_t p;
    size_t len;
    bool write;
};

// The device memory `op` reads and writes. Lock held.
std::vector<Access> accesses(const Op& op) {
    std::vector<Access> v;
    if (op.kind == OpKind::Copy) v.push_back({op.dst, op.len, true});
    if (op.kind == OpKind::Launch) {
        const size_t in = op.n * op.k->src_size;
        if (in_device((uintptr_t)op.src, in)) v.push_back({(uintptr_t)op.src, in, false});
        v.push_back({op.dst, op.n * op.k->dst_size, true});
    }
    return v;
}

// What is wrong if `op`, queued on `st`, races unfinished work on another stream
// over device memory (nothing else orders streams here: a queued event wait on any
// stream turns the check off). Lock held.
const char* races(Stream* st, const Op& op) {
    State& s = S();
    const std::vector<Access> mine = accesses(op);
    if (mine.empty()) return nullptr;
    for (Stream* other : s.running)
        for (const Op& o : other->queue)
            if (o.kind == OpKind::Wait) return nullptr;
    for (Stream* other : s.running) {
        if (other == st) continue;
        for (const Op& o : other->queue)
            for (const Access& a : accesses(o))
                for (const Access& b : mine)
                    if ((a.write || b.write) && overlaps(a.p, a.len, b.p, b.len))
                        return op.kind == OpKind::Copy ? "a host-to-device copy" : op.k->name;
    }
    return nullptr;
}

// Queues `op` on `h` (lock held). The null stream is the legacy default stream: its
// work runs at once, after the blocking streams' work.
CUresult enqueue(std::unique_lock<std::mutex>& lock, void* h, Op op) {
    State& s = S();
    if (h == nullptr) {
        s.cv.wait(lock, [&] {
            for (Stream* st : s.streams)
                if (st->blocking && !st->queue.empty()) return false;
            return true;
        });
        // (Copies on it never get here: cuMemcpyHtoDAsync carries them out itself.)
        if (op.kind == OpKind::Launch) {
            op.k->run(op.src, (unsigned char*)op.dst, op.n, op.threads);
        } else if (op.kind == OpKind::Record) {
            if (op.ev->done < op.gen) op.ev->done = op.gen;
        }
        return settled(lock);
    }
    Stream* st = as_stream(h);
    if (!s.streams.count(st)) return INVALID_HANDLE;
    if (const char* what = races(st, op)) {
        violate("%s: device memory it uses is used by unfinished work on another stream, one of "
                "them writing, with nothing ordering the two",
                what);
        return ILLEGAL_ADDRESS;
    }
    st->queue.push_back(op);
    if (st->queue.size() > s.max_queued) s.max_queued = st->queue.size();
    s.cv.notify_all();
    return SUCCESS;
}

// A stream work is queued on belongs to the current context (the null stream
// always does). Lock held.
CUresult check_stream(void* h, const char* what) {
    State& s = S();
    if (h == nullptr) return SUCCESS;
    Stream* st = as_stream(h);
    if (!s.streams.count(st)) return INVALID_HANDLE;
    if (st->ctx != t_ctx) {
        violate("%s queued on a stream of cuda:%d with cuda:%d's context current", what,
                st->ctx->device, t_ctx->device);
        return INVALID_HANDLE;
    }
    return SUCCESS;
}

void configure() {
    State& s = S();
    if (const char* v = std::getenv("FAKE_CUDA_DEVICES")) s.devices = std::atoi(v);
    if (const char* v = std::getenv("FAKE_CUDA_MEM")) s.device_mem = std::strtoull(v, nullptr, 10);
    if (const char* v = std::getenv("FAKE_CUDA_NO_REGISTER")) s.no_register = std::atoi(v) != 0;
    if (const char* v = std::getenv("FAKE_CUDA_CC")) s.cc = (int)(std::atof(v) * 10 + 0.5);
    if (const char* v = std::getenv("FAKE_CUDA_DELAY_US")) s.delay_us = std::atoi(v);
    if (const char* v = std::getenv("FAKE_CUDA_REPORT")) s.report = v;
    if (const char* v = std::getenv("FAKE_CUDA_ASYNC_FAULT")) s.fault_at = std::strtoull(v, nullptr, 10);
    if (const char* v = std::getenv("FAKE_CUDA_FAIL")) {
        std::string all = v;
        size_t at = 0;
        while (at < all.size()) {
            size_t end = all.find(',', at);
            if (end == std::string::npos) end = all.size();
            std::string item = all.substr(at, end - at);
            size_t c1 = item.find(':');
            if (c1 != std::string::npos) {
                size_t c2 = item.find(':', c1 + 1);
                uint64_t n = std::strtoull(item.c_str() + c1 + 1, nullptr, 10);
                CUresult code = c2 == std::string::npos ? 0 : std::atoi(item.c_str() + c2 + 1);
                s.fail_at[item.substr(0, c1)] = {n, code};
            }
            at = end + 1;
        }
    }
    for (int d = 0; d < s.devices; ++d) s.contexts.push_back(new Context{d});
    std::atexit(write_report);
}

}  // namespace

void tsconv::misaligned_vector_access(const void* p) {
    std::fprintf(stderr, "fake-cuda: VIOLATION: misaligned vector access at %p in a kernel\n", p);
    std::abort();
}

extern "C" {

CUresult cuGetErrorName(CUresult e, const char** out) {
    static const std::map<CUresult, const char*> names = {
        {SUCCESS, "CUDA_SUCCESS"},
        {INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE"},
        {OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY"},
        {NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED"},
        {NO_DEVICE, "CUDA_ERROR_NO_DEVICE"},
        {INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE"},
        {INVALID_IMAGE, "CUDA_ERROR_INVALID_IMAGE"},
        {INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT"},
        {INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE"},
        {NOT_FOUND, "CUDA_ERROR_NOT_FOUND"},
        {NOT_READY, "CUDA_ERROR_NOT_READY"},
        {ILLEGAL_ADDRESS, "CUDA_ERROR_ILLEGAL_ADDRESS"},
        {HOST_MEMORY_ALREADY_REGISTERED, "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED"},
        {HOST_MEMORY_NOT_REGISTERED, "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED"},
        {LAUNCH_FAILED, "CUDA_ERROR_LAUNCH_FAILED"},
        {NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED"},
        {UNKNOWN, "CUDA_ERROR_UNKNOWN"},
    };
    auto it = names.find(e);
    if (it == names.end()) return INVALID_VALUE;
    *out = it->second;
    return SUCCESS;
}

CUresult cuGetErrorString(CUresult e, const char** out) {
    const char* name = nullptr;
    if (cuGetErrorName(e, &name) != SUCCESS) return INVALID_VALUE;
    static const std::map<CUresult, const char*> texts = {
        {OUT_OF_MEMORY, "out of memory"},
        {ILLEGAL_ADDRESS, "an illegal memory access was encountered"},
        {INVALID_CONTEXT, "invalid device context"},
        {NO_DEVICE, "no CUDA-capable device is detected"},
    };
    auto it = texts.find(e);
    *out = it == texts.end() ? name : it->second;
    return SUCCESS;
}

CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    ENTER("cuMemGetInfo_v2", UNKNOWN);
    NEED_CONTEXT();
    *free_bytes = s.device_mem - s.device_bytes;
    *total = s.device_mem;
    return SUCCESS;
}

CUresult cuInit(unsigned flags) {
    State& s = S();
    std::unique_lock<std::mutex> lock(s.mu);
    static bool configured = false;
    if (!configured) {
        configure();
        configured = true;
    }
    if (CUresult f = injected("cuInit", NO_DEVICE)) return f;
    if (flags != 0) return INVALID_VALUE;
    s.initialized = s.devices > 0;
    return s.initialized ? SUCCESS : NO_DEVICE;
}

CUresult cuDeviceGetCount(int* count) {
    ENTER("cuDeviceGetCount", UNKNOWN);
    if (!s.initialized) return NOT_INITIALIZED;
    *count = s.devices;
    return SUCCESS;
}

CUresult cuDeviceGet(CUdevice* dev, int ordinal) {
    ENTER("cuDeviceGet", INVALID_DEVICE);
    if (!s.initialized) return NOT_INITIALIZED;
    if (ordinal < 0 || ordinal >= s.devices) return INVALID_DEVICE;
    *dev = ordinal;
    return SUCCESS;
}

CUresult cuDeviceGetAttribute(int* value, int attr, CUdevice dev) {
    ENTER("cuDeviceGetAttribute", INVALID_VALUE);
    if (!s.initialized) return NOT_INITIALIZED;
    if (dev < 0 || dev >= s.devices) return INVALID_DEVICE;
    switch (attr) {
        case 75:  // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
        case 76:  // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR
            *value = attr == 75 ? s.cc / 10 : s.cc % 10;
            return SUCCESS;
        case 99:   // CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED
        case 113:  // CU_DEVICE_ATTRIBUTE_READ_ONLY_HOST_REGISTER_SUPPORTED
            *value = s.no_register ? 0 : 1;
            return SUCCESS;
        default:
            std::fprintf(stderr, "fake-cuda: cuDeviceGetAttribute(%d) is not modelled\n", attr);
            return INVALID_VALUE;
    }
}

CUresult cuDevicePrimaryCtxRetain(void** ctx, CUdevice dev) {
    ENTER("cuDevicePrimaryCtxRetain", OUT_OF_MEMORY);
    if (!s.initialized) return NOT_INITIALIZED;
    if (dev < 0 || dev >= s.devices) return INVALID_DEVICE;
    s.contexts[dev]->refs++;
    *ctx = s.contexts[dev];
    return SUCCESS;
}

CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
    State& s = S();
    std::unique_lock<std::mutex> lock(s.mu);
    if (!s.initialized) return NOT_INITIALIZED;
    if (dev < 0 || dev >= s.devices) return INVALID_DEVICE;
    if (s.contexts[dev]->refs == 0) {
        violate("cuDevicePrimaryCtxRelease on device %d without a matching retain", dev);
        return INVALID_CONTEXT;
    }
    if (--s.contexts[dev]->refs == 0) {
        size_t left = 0;
        for (auto& [p, a] : s.device_allocs) left += a.ctx == s.contexts[dev];
        for (Stream* st : s.streams) left += st->ctx == s.contexts[dev];
        if (left && s.sticky != SUCCESS)
            std::fprintf(stderr, "fake-cuda: a faulted context released: its memory goes with it\n");
        else if (left)
            violate("the last reference to cuda:%d's context released with %zu allocations or "
                    "streams still live",
                    dev, left);
    }
    return SUCCESS;
}

CUresult cuCtxSetCurrent(void* ctx) {
    ENTER("cuCtxSetCurrent", INVALID_CONTEXT);
    if (!s.initialized) return NOT_INITIALIZED;
    Context* c = static_cast<Context*>(ctx);
    if (c != nullptr) {
        bool known = false;
        for (Context* k : s.contexts) known |= k == c;
        if (!known || c->refs == 0) return INVALID_CONTEXT;
    }
    t_ctx = c;
    return SUCCESS;
}

CUresult cuCtxGetCurrent(void** ctx) {
    ENTER("cuCtxGetCurrent", INVALID_CONTEXT);
    if (!s.initialized) return NOT_INITIALIZED;
    *ctx = t_ctx;
    return SUCCESS;
}

CUresult cuMemAlloc_v2(CUdeviceptr* dptr, size_t len) {
    ENTER("cuMemAlloc_v2", OUT_OF_MEMORY);
    NEED_CONTEXT();
    if (len == 0) return INVALID_VALUE;
    if (len > s.device_mem - s.device_bytes) return OUT_OF_MEMORY;
    void* p = std::malloc(len);
    if (!p) return OUT_OF_MEMORY;
    std::memset(p, 0xCD, len);  // not zeros: unwritten bytes must not pass for loaded ones
    s.device_allocs[(uintptr_t)p] = DeviceAlloc{len, t_ctx};
    s.device_bytes += len;
    *dptr = (uintptr_t)p;
    return SUCCESS;
}

CUresult cuMemFree_v2(CUdeviceptr p) {
    ENTER("cuMemFree_v2", UNKNOWN);
    NEED_CONTEXT();
    auto it = s.device_allocs.find(p);
    if (it == s.device_allocs.end()) {
        // A real driver refuses it too; here it is a bug in the caller's bookkeeping
        // (memory freed twice, or memory the caller did not allocate).
        violate("cuMemFree of %#llx, which is no live allocation's start", p);
        return INVALID_VALUE;
    }
    if (const char* who = queued_use(p, it->second.len))
        violate("cuMemFree of %zu device bytes that %s still uses", it->second.len, who);
    s.device_bytes -= it->second.len;
    s.device_allocs.erase(it);
    std::free((void*)p);
    return SUCCESS;
}

// What a pointer is: CU_POINTER_ATTRIBUTE_MEMORY_TYPE (device allocations are
// CU_MEMORYTYPE_DEVICE, pinned or registered host memory CU_MEMORYTYPE_HOST) and
// CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL; memory the driver did not allocate or
// register is CUDA_ERROR_INVALID_VALUE, as on a real driver. Needs no context.
CUresult cuPointerGetAttribute(void* data, int attr, CUdeviceptr p) {
    ENTER("cuPointerGetAttribute", INVALID_VALUE);
    if (!s.initialized) return NOT_INITIALIZED;
    const DeviceAlloc* d = in_device(p, 1);
    const HostRange* h = d ? nullptr : in_pinned(p, 1);
    if (!d && !h) return INVALID_VALUE;
    uintptr_t start = 0;
    size_t len = 0;
    if (d) {
        auto it = std::prev(s.device_allocs.upper_bound(p));
        start = it->first;
        len = it->second.len;
    } else {
        auto it = std::prev(s.host.upper_bound(p));
        start = it->first;
        len = it->second.len;
    }
    switch (attr) {
        case 1:  // CU_POINTER_ATTRIBUTE_CONTEXT
            *static_cast<void**>(data) = d ? static_cast<void*>(d->ctx) : nullptr;
            return SUCCESS;
        case 2:  // CU_POINTER_ATTRIBUTE_MEMORY_TYPE
            *static_cast<unsigned*>(data) = d ? 2u : 1u;
            return SUCCESS;
        case 8:  // CU_POINTER_ATTRIBUTE_IS_MANAGED (nothing here is)
            *static_cast<int*>(data) = 0;
            return SUCCESS;
        case 9:  // CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL
            *static_cast<int*>(data) = d ? d->ctx->device : 0;
            return SUCCESS;
        case 11:  // CU_POINTER_ATTRIBUTE_RANGE_START_ADDR
            *static_cast<CUdeviceptr*>(data) = start;
            return SUCCESS;
        case 12:  // CU_POINTER_ATTRIBUTE_RANGE_SIZE
            *static_cast<size_t*>(data) = len;
            return SUCCESS;
        default:
            std::fprintf(stderr, "fake-cuda: cuPointerGetAttribute(%d) is not modelled\n", attr);
            return INVALID_VALUE;
    }
}

CUresult cuMemHostAlloc(void** out, size_t len, unsigned flags) {
    ENTER("cuMemHostAlloc", OUT_OF_MEMORY);
    NEED_CONTEXT();
    if (len == 0 || (flags & ~7u)) return INVALID_VALUE;
    void* p = nullptr;
    if (posix_memalign(&p, PAGE, (len + PAGE - 1) / PAGE * PAGE) != 0) return OUT_OF_MEMORY;
    std::memset(p, 0xAB, len);
    s.host[(uintptr_t)p] = HostRange{len, false};
    *out = p;
    return SUCCESS;
}

CUresult cuMemAllocHost_v2(void** out, size_t len) { return cuMemHostAlloc(out, len, 0); }

CUresult cuMemFreeHost(void* p) {
    ENTER("cuMemFreeHost", UNKNOWN);
    NEED_CONTEXT();
    auto it = s.host.find((uintptr_t)p);
    if (it == s.host.end() || it->second.registered) return INVALID_VALUE;
    if (const char* who = queued_use((uintptr_t)p, it->second.len))
        violate("cuMemFreeHost of %zu pinned bytes that %s still reads", it->second.len, who);
    s.host.erase(it);
    std::free(p);
    return SUCCESS;
}

CUresult cuMemHostRegister_v2(void* p, size_t len, unsigned flags) {
    ENTER("cuMemHostRegister_v2", OUT_OF_MEMORY);
    NEED_CONTEXT();
    if (s.no_register) return NOT_SUPPORTED;
    if (p == nullptr || len == 0 || (flags & ~15u)) return INVALID_VALUE;
    const uintptr_t lo = (uintptr_t)p & ~(PAGE - 1);
    const uintptr_t hi = ((uintptr_t)p + len + PAGE - 1) & ~(PAGE - 1);
    if (!mapped(lo, hi, flags & 8u)) return INVALID_VALUE;
    for (auto& [base, r] : s.host) {
        const uintptr_t blo = base & ~(PAGE - 1);
        const uintptr_t bhi = (base + r.len + PAGE - 1) & ~(PAGE - 1);
        if (lo < bhi && blo < hi) return HOST_MEMORY_ALREADY_REGISTERED;
    }
    s.host[(uintptr_t)p] = HostRange{len, true};
    s.registrations++;
    s.registered_bytes += len;
    if (s.registered_bytes > s.max_registered_bytes) s.max_registered_bytes = s.registered_bytes;
    return SUCCESS;
}

CUresult cuMemHostUnregister(void* p) {
    ENTER("cuMemHostUnregister", UNKNOWN);
    NEED_CONTEXT();
    auto it = s.host.find((uintptr_t)p);
    if (it == s.host.end() || !it->second.registered) return HOST_MEMORY_NOT_REGISTERED;
    if (const char* who = queued_use((uintptr_t)p, it->second.len))
        violate("cuMemHostUnregister of %zu bytes that %s still reads", it->second.len, who);
    s.registered_bytes -= it->second.len;
    s.host.erase(it);
    return SUCCESS;
}

CUresult cuStreamCreate(void** out, unsigned flags) {
    ENTER("cuStreamCreate", OUT_OF_MEMORY);
    NEED_CONTEXT();
    if (flags & ~1u) return INVALID_VALUE;
    Stream* st = new Stream;
    st->ctx = t_ctx;
    st->blocking = (flags & 1u) == 0;
    s.streams.insert(st);
    s.running.insert(st);
    std::thread(worker, st).detach();
    *out = st;
    return SUCCESS;
}

CUresult cuStreamSynchronize(void* h) {
    ENTER("cuStreamSynchronize", UNKNOWN);
    if (h == nullptr) {
        s.cv.wait(lock, [&] {
            for (Stream* st : s.streams)
                if (st->blocking && !st->queue.empty()) return false;
            return true;
        });
        return settled(lock);
    }
    Stream* st = as_stream(h);
    if (!s.streams.count(st)) return INVALID_HANDLE;
    s.cv.wait(lock, [&] { return st->queue.empty() || s.sticky != SUCCESS; });
    return settled(lock);
}

// Waits for the work of every stream of the current context.
CUresult cuCtxSynchronize() {
    ENTER("cuCtxSynchronize", UNKNOWN);
    NEED_CONTEXT();
    Context* c = t_ctx;
    s.cv.wait(lock, [&] {
        if (s.sticky != SUCCESS) return true;
        for (Stream* st : s.running)
            if (st->ctx == c && !st->queue.empty()) return false;
        return true;
    });
    return settled(lock);
}

CUresult cuStreamDestroy_v2(void* h) {
    ENTER("cuStreamDestroy_v2", UNKNOWN);
    Stream* st = as_stream(h);
    if (!s.streams.count(st)) return INVALID_HANDLE;
    // As the driver: returns at once; queued work still runs, then the stream goes.
    st->destroyed = true;
    s.streams.erase(st);
    s.cv.notify_all();
    return SUCCESS;
}

CUresult cuEventCreate(void** out, unsigned flags) {
    ENTER("cuEventCreate", OUT_OF_MEMORY);
    NEED_CONTEXT();
    if (flags & ~15u) return INVALID_VALUE;
    Event* e = new Event;
    e->ctx = t_ctx;
    s.events.insert(e);
    *out = e;
    return SUCCESS;
}

CUresult cuEventDestroy_v2(void* h) {
    ENTER("cuEventDestroy_v2", UNKNOWN);
    Event* e = static_cast<Event*>(h);
    if (!s.events.count(e)) return INVALID_HANDLE;
    s.events.erase(e);
    e->live = false;  // kept: a queued record may still complete it
    return SUCCESS;
}

CUresult cuEventRecord(void* h, void* stream) {
    ENTER("cuEventRecord", UNKNOWN);
    Event* e = static_cast<Event*>(h);
    if (!s.events.count(e)) return INVALID_HANDLE;
    if (stream != nullptr && s.streams.count(as_stream(stream)) && as_stream(stream)->ctx != e->ctx) {
        violate("an event of cuda:%d recorded on a stream of cuda:%d", e->ctx->device,
                as_stream(stream)->ctx->device);
        return INVALID_HANDLE;
    }
    Op op{OpKind::Record};
    op.ev = e;
    op.gen = ++e->recorded;
    return enqueue(lock, stream, op);
}

CUresult cuEventQuery(void* h) {
    ENTER("cuEventQuery", UNKNOWN);
    Event* e = static_cast<Event*>(h);
    if (!s.events.count(e)) return INVALID_HANDLE;
    return e->done >= e->recorded ? SUCCESS : NOT_READY;
}

CUresult cuEventSynchronize(void* h) {
    ENTER("cuEventSynchronize", UNKNOWN);
    Event* e = static_cast<Event*>(h);
    if (!s.events.count(e)) return INVALID_HANDLE;
    const uint64_t gen = e->recorded;
    s.cv.wait(lock, [&] { return e->done >= gen || s.sticky != SUCCESS; });
    return settled(lock);
}

CUresult cuStreamWaitEvent(void* stream, void* h, unsigned flags) {
    ENTER("cuStreamWaitEvent", UNKNOWN);
    Event* e = static_cast<Event*>(h);
    if (!s.events.count(e) || flags != 0) return INVALID_VALUE;
    Op op{OpKind::Wait};
    op.ev = e;
    op.gen = e->recorded;
    if (stream == nullptr) {
        s.cv.wait(lock, [&] { return e->done >= op.gen || s.sticky != SUCCESS; });
        return settled(lock);
    }
    return enqueue(lock, stream, op);
}

// Queues (from pinned memory on a stream) or carries out at once (pageable) a
// host-to-device copy whose destination and stream are checked. Lock held.
CUresult queue_htod(std::unique_lock<std::mutex>& lock, CUdeviceptr dst, const void* src, size_t len,
                    void* stream) {
    State& s = S();
    Op op{OpKind::Copy};
    op.src = static_cast<const unsigned char*>(src);
    op.dst = dst;
    op.len = len;
    s.htod_bytes += len;
    if (in_pinned((uintptr_t)src, len) && stream != nullptr) {
        s.htod_pinned++;
        lock.unlock();
        op.hash = hash_bytes(op.src, len);
        lock.lock();
        if (s.sticky != SUCCESS) return settled(lock);
        return enqueue(lock, stream, op);
    }
    // A source that runs from pinned memory into memory outside that range (the next
    // registration, or pageable memory): refused, as an H200's driver refused a copy
    // across two adjacent registrations (for pinned-then-pageable, a strict guess).
    if (!in_pinned((uintptr_t)src, len) && touches_pinned((uintptr_t)src, len)) return INVALID_VALUE;
    // Pageable (or the legacy stream): after the stream's earlier work, at once.
    s.htod_pageable++;
    if (stream != nullptr) {
        Stream* st = as_stream(stream);
        if (!s.streams.count(st)) return INVALID_HANDLE;
        s.cv.wait(lock, [&] { return st->queue.empty() || s.sticky != SUCCESS; });
        if (s.sticky != SUCCESS) return settled(lock);
    }
    std::memcpy((void*)dst, src, len);
    return SUCCESS;
}

CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t len, void* stream) {
    ENTER("cuMemcpyHtoDAsync_v2", ILLEGAL_ADDRESS);
    NEED_CONTEXT();
    if (len == 0) return SUCCESS;
    const DeviceAlloc* to = in_device(dst, len);
    if (!to) {
        violate("a host-to-device copy of %zu bytes to %#llx is outside every device allocation",
                len, (unsigned long long)dst);
        return ILLEGAL_ADDRESS;
    }
    if (CUresult e = check_stream(stream, "a host-to-device copy")) return e;
    if (to->ctx != t_ctx) {
        violate("a host-to-device copy into cuda:%d's memory queued with cuda:%d's context current",
                to->ctx->device, t_ctx->device);
        return INVALID_CONTEXT;
    }
    return queue_htod(lock, dst, src, len, stream);
}

struct CUDA_MEMCPY2D {
    size_t srcXInBytes, srcY;
    int srcMemoryType;
    const void* srcHost;
    CUdeviceptr srcDevice;
    void* srcArray;
    size_t srcPitch;
    size_t dstXInBytes, dstY;
    int dstMemoryType;
    void* dstHost;
    CUdeviceptr dstDevice;
    void* dstArray;
    size_t dstPitch;
    size_t WidthInBytes, Height;
};

// Host to device only (memory types 1 and 2), the one kind tensorstream makes: rows
// of WidthInBytes, srcPitch apart in host memory, dstPitch apart on the device.
// Strict where the driver's documentation is: the whole source range, from the first
// row's first byte to the last row's last, lies in one pinned allocation or
// registration (else CUDA_ERROR_INVALID_VALUE, as for a plain copy across two), and
// the destination's in one device allocation. Queued as one copy per row.
CUresult cuMemcpy2DAsync_v2(const CUDA_MEMCPY2D* c, void* stream) {
    ENTER("cuMemcpy2DAsync_v2", INVALID_VALUE);
    NEED_CONTEXT();
    if (c == nullptr || c->srcMemoryType != 1 || c->dstMemoryType != 2) return INVALID_VALUE;
    const size_t w = c->WidthInBytes, h = c->Height;
    if (w > c->srcPitch || w > c->dstPitch) return INVALID_VALUE;
    if (w == 0 || h == 0) return SUCCESS;
    const unsigned char* src =
        static_cast<const unsigned char*>(c->srcHost) + c->srcY * c->srcPitch + c->srcXInBytes;
    const CUdeviceptr dst = c->dstDevice + c->dstY * c->dstPitch + c->dstXInBytes;
    const size_t src_span = (h - 1) * c->srcPitch + w, dst_span = (h - 1) * c->dstPitch + w;
    const DeviceAlloc* to = in_device(dst, dst_span);
    if (!to) {
        violate("a 2-D host-to-device copy of %zu rows of %zu bytes to %#llx is outside every "
                "device allocation",
                h, w, (unsigned long long)dst);
        return ILLEGAL_ADDRESS;
    }
    if (CUresult e = check_stream(stream, "a 2-D host-to-device copy")) return e;
    if (to->ctx != t_ctx) {
        violate("a 2-D host-to-device copy into cuda:%d's memory queued with cuda:%d's context "
                "current",
                to->ctx->device, t_ctx->device);
        return INVALID_CONTEXT;
    }
    if (!in_pinned((uintptr_t)src, src_span) && touches_pinned((uintptr_t)src, src_span))
        return INVALID_VALUE;
    s.htod_2d++;
    for (size_t r = 0; r < h; r++)
        if (CUresult e = queue_htod(lock, dst + r * c->dstPitch, src + r * c->srcPitch, w, stream))
            return e;
    return SUCCESS;
}


CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t len) {
    ENTER("cuMemcpyDtoH_v2", ILLEGAL_ADDRESS);
    NEED_CONTEXT();
    if (len == 0) return SUCCESS;
    if (!in_device(src, len)) {
        violate("a device-to-host copy of %zu bytes from %#llx is outside every device allocation",
                len, (unsigned long long)src);
        return ILLEGAL_ADDRESS;
    }
    // The legacy default stream: after the blocking streams' work, not the others'.
    s.cv.wait(lock, [&] {
        for (Stream* st : s.streams)
            if (st->blocking && !st->queue.empty()) return false;
        return true;
    });
    if (s.sticky != SUCCESS) return settled(lock);
    s.dtoh++;
    std::memcpy(dst, (const void*)src, len);
    return SUCCESS;
}

// Synchronous, from any host memory (the tests fill their own device memory with it).
CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t len) {
    ENTER("cuMemcpyHtoD_v2", ILLEGAL_ADDRESS);
    NEED_CONTEXT();
    if (len == 0) return SUCCESS;
    if (!in_device(dst, len)) {
        violate("a host-to-device copy of %zu bytes to %#llx is outside every device allocation",
                len, (unsigned long long)dst);
        return ILLEGAL_ADDRESS;
    }
    if (const char* who = queued_use(dst, len))
        violate("a synchronous copy to %zu device bytes that %s still uses", len, who);
    // The legacy default stream: after the blocking streams' work, not the others'.
    s.cv.wait(lock, [&] {
        for (Stream* st : s.streams)
            if (st->blocking && !st->queue.empty()) return false;
        return true;
    });
    if (s.sticky != SUCCESS) return settled(lock);
    std::memcpy((void*)dst, src, len);
    return SUCCESS;
}

CUresult cuModuleLoadData(void** module, const void* image) {
    ENTER("cuModuleLoadData", INVALID_IMAGE);
    NEED_CONTEXT();
    // The image must be the repository's PTX: text naming every kernel.
    const char* text = static_cast<const char*>(image);
    if (text == nullptr || std::strstr(text, ".version") == nullptr) return INVALID_IMAGE;
    for (const Kernel& k : KERNELS) {
        std::string entry = std::string(".entry ") + k.name + "(";
        if (std::strstr(text, entry.c_str()) == nullptr) return INVALID_IMAGE;
    }
    uintptr_t m = 0x1000 + s.calls["cuModuleLoadData"] * 16;
    s.modules[m] = t_ctx;
    *module = (void*)m;
    return SUCCESS;
}

CUresult cuModuleUnload(void* module) {
    ENTER("cuModuleUnload", UNKNOWN);
    if (!s.modules.erase((uintptr_t)module)) return INVALID_HANDLE;
    for (Function* f : s.functions)
        if (f->module == (uintptr_t)module) f->module = 0;  // handles of an unloaded module
    return SUCCESS;
}

CUresult cuModuleGetFunction(void** fn, void* module, const char* name) {
    ENTER("cuModuleGetFunction", NOT_FOUND);
    NEED_CONTEXT();
    auto m = s.modules.find((uintptr_t)module);
    if (m == s.modules.end()) return INVALID_HANDLE;
    for (const Kernel& k : KERNELS) {
        if (std::strcmp(k.name, name) == 0) {
            Function* f = new Function{&k, m->first, m->second};
            s.functions.push_back(f);
            *fn = f;
            return SUCCESS;
        }
    }
    return NOT_FOUND;
}

CUresult cuLaunchKernel(void* fn, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                        unsigned by, unsigned bz, unsigned shared, void* stream, void** params,
                        void** extra) {
    ENTER("cuLaunchKernel", LAUNCH_FAILED);
    NEED_CONTEXT();
    const Function* f = nullptr;
    for (const Function* c : s.functions)
        if (c == fn) f = c;
    if (f == nullptr || f->module == 0) return INVALID_HANDLE;
    const Kernel* k = f->k;
    if (f->ctx != t_ctx) {
        violate("%s launched with another device's context current", k->name);
        return INVALID_HANDLE;
    }
    if (CUresult e = check_stream(stream, k->name)) return e;
    if (params == nullptr || extra != nullptr || gx == 0 || gy != 1 || gz != 1 || bx == 0 ||
        bx > 1024 || by != 1 || bz != 1 || gx > 0x7FFFFFFFu || shared > 48 * 1024)
        return INVALID_VALUE;
    Op op{OpKind::Launch};
    op.k = k;
    std::memcpy(&op.src, params[0], sizeof op.src);
    std::memcpy(&op.dst, params[1], sizeof op.dst);
    std::memcpy(&op.n, params[2], sizeof op.n);
    op.threads = (unsigned long long)gx * bx;
    const size_t in = op.n * k->src_size, out = op.n * k->dst_size;
    const DeviceAlloc* from = in_device((uintptr_t)op.src, in);
    const DeviceAlloc* to = in_device(op.dst, out);
    if (!(from || in_pinned((uintptr_t)op.src, in)) || !to) {
        violate("%s over %llu elements reads or writes outside device memory", k->name, op.n);
        return ILLEGAL_ADDRESS;
    }
    if ((from && from->ctx != t_ctx) || to->ctx != t_ctx) {
        violate("%s on cuda:%d touches another device's memory", k->name, t_ctx->device);
        return ILLEGAL_ADDRESS;
    }
    if (overlaps((uintptr_t)op.src, in, op.dst, out)) {
        violate("%s's source and destination overlap", k->name);
        return ILLEGAL_ADDRESS;
    }
    s.launches++;
    return enqueue(lock, stream, op);
}

}  // extern "C"
