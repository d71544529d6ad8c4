// Host build of kernels/convert.cu for tests/kernel_host.rs: the same element
// functions and the same vector/scalar split as the CUDA kernels, compiled with
// g++ and run one simulated thread after another.
//
//   host_driver list
//       prints the kernel names, one per line
//   host_driver run KERNEL INPUT OUTPUT SRC_SKEW DST_SKEW THREADS
//       converts the elements in file INPUT and writes them to file OUTPUT;
//       the source sits SRC_SKEW bytes and the destination DST_SKEW bytes past a
//       256-byte boundary (as in a chunked launch); THREADS simulated threads
//       share the grid-stride loops; bytes around the destination are checked to
//       be untouched; prints "vector_elements=N", the elements the vector path
//       converted.
//
// Exit status 0 on success, 1 on a failed check, 2 on a usage error.

#include "convert.cu"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

void tsconv::misaligned_vector_access(const void* p) {
    std::fprintf(stderr, "host_driver: misaligned vector access at %p\n", p);
    std::abort();
}

namespace {

const unsigned char POISON = 0xA5;
const size_t GUARD = 64;

bool read_file(const char* path, std::vector<unsigned char>& out) {
    std::FILE* f = std::fopen(path, "rb");
    if (!f) return false;
    unsigned char buf[1 << 16];
    size_t got;
    while ((got = std::fread(buf, 1, sizeof buf, f)) > 0) out.insert(out.end(), buf, buf + got);
    const bool ok = !std::ferror(f);
    std::fclose(f);
    return ok;
}

bool write_file(const char* path, const unsigned char* data, size_t len) {
    std::FILE* f = std::fopen(path, "wb");
    if (!f) return false;
    const bool ok = std::fwrite(data, 1, len, f) == len;
    return std::fclose(f) == 0 && ok;
}

// A buffer of `len` bytes starting `skew` bytes past a 256-byte boundary, with
// GUARD poisoned bytes on either side.
struct Skewed {
    std::vector<unsigned char> storage;
    unsigned char* data;
    size_t len;

    Skewed(size_t len_, size_t skew) : storage(len_ + skew + 2 * GUARD + 512, POISON), len(len_) {
        const tsconv::u64 base = (tsconv::u64)(storage.data() + GUARD);
        const tsconv::u64 aligned = (base + 255u) & ~(tsconv::u64)255u;
        data = storage.data() + (aligned - (tsconv::u64)storage.data()) + skew;
    }

    bool guards_intact() const {
        for (const unsigned char* p = storage.data(); p < data; ++p)
            if (*p != POISON) return false;
        for (const unsigned char* p = data + len; p < storage.data() + storage.size(); ++p)
            if (*p != POISON) return false;
        return true;
    }
};

template <typename Op>
int run(const char* input, const char* output, size_t src_skew, size_t dst_skew,
        tsconv::u64 threads) {
    std::vector<unsigned char> in;
    if (!read_file(input, in)) {
        std::fprintf(stderr, "host_driver: cannot read %s\n", input);
        return 1;
    }
    if (in.size() % Op::S != 0) {
        std::fprintf(stderr, "host_driver: %zu bytes is not a whole number of elements\n",
                     in.size());
        return 1;
    }
    const tsconv::u64 n = in.size() / Op::S;
    Skewed src(in.size(), src_skew);
    if (!in.empty()) std::memcpy(src.data, in.data(), in.size());
    Skewed dst(n * Op::D, dst_skew);
    // As the kernels do: 1-byte sources to 16-bit types through a table of the op (filled by one
    // simulated thread here, by the whole block in shared memory there).
    if constexpr (Op::S == 1 && Op::D == 2) {
        tsconv::u32 table[256];
        tsconv::fill_table<Op>(table, 0u, 1u);
        for (tsconv::u64 tid = 0; tid < threads; ++tid)
            tsconv::convert_range<Op>(src.data, dst.data, n, tid, threads, tsconv::Table{table});
    } else {
        for (tsconv::u64 tid = 0; tid < threads; ++tid)
            tsconv::convert_range<Op>(src.data, dst.data, n, tid, threads, tsconv::Direct<Op>{});
    }
    const tsconv::Split sp = tsconv::split_range<Op::S, Op::D>(src.data, dst.data, n);
    std::printf("vector_elements=%llu\n", sp.groups * tsconv::GROUP);
    if (!dst.guards_intact()) {
        std::fprintf(stderr, "host_driver: write outside the destination\n");
        return 1;
    }
    if (!write_file(output, dst.data, dst.len)) {
        std::fprintf(stderr, "host_driver: cannot write %s\n", output);
        return 1;
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc == 2 && std::strcmp(argv[1], "list") == 0) {
#define TS_NAME(NAME, OP) std::puts(#NAME);
        TS_CONVERT_PAIRS(TS_NAME)
#undef TS_NAME
        return 0;
    }
    if (argc != 8 || std::strcmp(argv[1], "run") != 0) {
        std::fprintf(stderr,
                     "usage: host_driver list\n"
                     "       host_driver run KERNEL INPUT OUTPUT SRC_SKEW DST_SKEW THREADS\n");
        return 2;
    }
    const char* kernel = argv[2];
    const size_t src_skew = std::strtoul(argv[5], nullptr, 10);
    const size_t dst_skew = std::strtoul(argv[6], nullptr, 10);
    const tsconv::u64 threads = std::strtoull(argv[7], nullptr, 10);
    if (src_skew >= 256 || dst_skew >= 256 || threads == 0) {
        std::fprintf(stderr, "host_driver: skews must be < 256 and THREADS > 0\n");
        return 2;
    }
#define TS_RUN(NAME, OP)                                                           \
    if (std::strcmp(kernel, #NAME) == 0)                                           \
        return run<tsconv::OP>(argv[3], argv[4], src_skew, dst_skew, threads);
    TS_CONVERT_PAIRS(TS_RUN)
#undef TS_RUN
    std::fprintf(stderr, "host_driver: unknown kernel %s\n", kernel);
    return 2;
}
