/* Counts the C heap's large requests (malloc, calloc, realloc, aligned) of a process it is preloaded into
 * (LD_PRELOAD, glibc): bench.postprocess reads the two counters between a frame's steps. Under the daemon's
 * fixed mmap threshold (qkdd/malloc_tuning.py, 256 KiB) each such request is a fresh mapping whose pages the
 * kernel zeroes on first touch. Every call goes on to glibc's own allocator. */
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t count, size_t n);
extern void *__libc_realloc(void *p, size_t n);
extern void *__libc_memalign(size_t align, size_t n);

#define LARGE_BYTES ((size_t)256 * 1024)

_Atomic unsigned long long bench_large_allocs;
_Atomic unsigned long long bench_large_alloc_bytes;

static void count(size_t n)
{
    if (n >= LARGE_BYTES) {
        atomic_fetch_add(&bench_large_allocs, 1);
        atomic_fetch_add(&bench_large_alloc_bytes, n);
    }
}

void *malloc(size_t n) { count(n); return __libc_malloc(n); }
void *realloc(void *p, size_t n) { count(n); return __libc_realloc(p, n); }
void *aligned_alloc(size_t align, size_t n) { count(n); return __libc_memalign(align, n); }
void *memalign(size_t align, size_t n) { count(n); return __libc_memalign(align, n); }

void *calloc(size_t count_, size_t n)
{
    size_t total;
    count(__builtin_mul_overflow(count_, n, &total) ? SIZE_MAX : total);
    return __libc_calloc(count_, n);
}

int posix_memalign(void **out, size_t align, size_t n)
{
    count(n);
    void *p = __libc_memalign(align, n);
    if (p == NULL)
        return 12;  /* ENOMEM */
    *out = p;
    return 0;
}
