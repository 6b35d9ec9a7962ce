/* prng.c - xoshiro256** keyed from a 256-bit seed, unbiased bounded draws and Fisher-Yates shuffles. */
#include "qkd_prng.h"
#include "qkd_bits.h"

/* SplitMix64 (Steele, Lea & Flood, OOPSLA 2014): spreads seed words over the whole state. */
static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t load_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

int qkd_prng_init(qkd_prng *g, const uint8_t *seed, size_t seed_len, uint64_t stream)
{
    if (g == NULL || seed == NULL || seed_len != QKD_PRNG_SEED_BYTES)
        return QKD_EINVAL;
    uint64_t x = stream * 0xD1B54A32D192ED03ull;
    for (int i = 0; i < 4; i++) {
        x ^= load_le64(seed + 8 * i);
        g->s[i] = splitmix64(&x);
    }
    if ((g->s[0] | g->s[1] | g->s[2] | g->s[3]) == 0)
        g->s[0] = 1; /* the all-zero state is the one fixed point of xoshiro */
    return QKD_OK;
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

/* The step itself, inlined into the loops of this file (the exported symbol goes through the PLT). */
static inline uint64_t next(qkd_prng *g)
{
    uint64_t *s = g->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

uint64_t qkd_prng_next(qkd_prng *g)
{
    return next(g);
}

/* Uniform in [0, bound): Lemire's multiply-and-reject ("Fast random integer generation in an
 * interval", ACM TOMACS 29(1), 2019), exact, so both ends draw the same sequence. bound >= 1. */
static inline uint32_t below(qkd_prng *g, uint32_t bound)
{
    uint64_t m = (next(g) >> 32) * (uint64_t)bound;
    uint32_t low = (uint32_t)m;
    if (low < bound) {
        uint32_t threshold = (uint32_t)(-bound) % bound;
        while (low < threshold) {
            m = (next(g) >> 32) * (uint64_t)bound;
            low = (uint32_t)m;
        }
    }
    return (uint32_t)(m >> 32);
}

uint32_t qkd_prng_below(qkd_prng *g, uint32_t bound)
{
    return below(g, bound);
}

int qkd_prng_permutation(qkd_prng *g, uint32_t *out, size_t n)
{
    if (g == NULL || (out == NULL && n > 0) || n > UINT32_MAX)
        return QKD_EINVAL;
    for (size_t i = 0; i < n; i++)
        out[i] = (uint32_t)i;
    /* Fisher-Yates (Durstenfeld): every permutation equally likely. Step m (m = n .. 2) swaps out[m - 1]
     * with out[partner], partner = below(m). The partners depend only on the generator, so they are drawn
     * AHEAD steps early into a ring and their cache lines prefetched then: on a large array every swap
     * is a cache (and TLB) miss, and this keeps AHEAD of them in flight instead of stalling on each. The
     * draws are the same, in the same order, as drawing each partner at its step. */
    enum { AHEAD = 64 }; /* a power of two */
    uint32_t ring[AHEAD];
    size_t draw = n; /* the next step whose partner is drawn */
    for (; draw > 1 && n - draw < AHEAD; draw--) {
        ring[draw % AHEAD] = below(g, (uint32_t)draw);
        __builtin_prefetch(&out[ring[draw % AHEAD]], 1);
    }
    for (size_t m = n; m > 1; m--) {
        uint32_t partner = ring[m % AHEAD];
        if (draw > 1) { /* draw == m - AHEAD: the slot just read */
            ring[draw % AHEAD] = below(g, (uint32_t)draw);
            __builtin_prefetch(&out[ring[draw % AHEAD]], 1);
            draw--;
        }
        uint32_t t = out[m - 1];
        out[m - 1] = out[partner];
        out[partner] = t;
    }
    return QKD_OK;
}
