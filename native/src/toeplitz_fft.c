/* toeplitz_fft.c - Toeplitz hashing of large blocks by an additive FFT over GF(2^64).
 *
 * Why: the carry-less Karatsuba path (toeplitz.c) costs O(n^1.58) and takes 18 s at n = 2^27; large
 * blocks matter because finite-key corrections shrink with the block. HiLS (Tang, Liu, Zhai, Wu, Yu,
 * "High-speed and large-scale privacy amplification scheme for quantum key distribution", Sci. Rep. 9,
 * 15733 (2019)) showed FFT-based Toeplitz hashing of 128 Mbit blocks at 71 Mbit/s on a CPU; it splits
 * the key and shuffles the seed, so its output is not the plain Toeplitz hash. Here the plain hash is
 * computed exactly, with an FFT in characteristic 2 instead of a complex or number-theoretic one.
 *
 * Theory of operation.
 * 1. As in toeplitz.c, y = T(s) x is the middle of the GF(2)[x] product u(x) * x(x), u = s rotated left
 *    by m (y[i] = coefficient i + n - 1).
 * 2. Both factors are cut into 32-bit chunks a_k(x), and each chunk is read as an element of
 *    GF(2^64) = GF(2)[z]/(z^64 + z^4 + z^3 + z + 1). Products of two chunks have degree <= 62, so
 *    they are never reduced: the product of the two GF(2^64)[y] polynomials (y = x^32) has as its
 *    k-th coefficient exactly sum_{i+j=k} a_i(x) b_j(x) in GF(2)[x], and overlapping these 63-bit
 *    coefficients at 32-bit steps gives the binary product (the embedding used by Chen, Cheng, Kuo,
 *    Li and Yang, "Faster multiplication for long binary polynomials", arXiv:1708.09746, sec. 2).
 * 3. The GF(2^64)[y] product of length < N = 2^K is computed by evaluating both factors on the
 *    K-dimensional subspace W_K spanned by a Cantor basis (beta_0 = 1, beta_i^2 + beta_i =
 *    beta_(i-1); D. G. Cantor, J. Combin. Theory A 50 (1989) 285), multiplying pointwise and
 *    interpolating: the additive FFT of S. Gao and T. Mateer, "Additive fast Fourier transforms over
 *    finite fields", IEEE Trans. Inf. Theory 56 (2010) 6265, Algorithm 2. One step: write
 *    f(y) = g0(y^2 + y) + y g1(y^2 + y) (a Taylor expansion at y^2 + y, XORs only); since
 *    s(y) = y^2 + y maps W_k onto W_(k-1) two-to-one (s(beta_0) = 0, s(beta_i) = beta_(i-1)),
 *    f(w) = G0 + w G1 and f(w + 1) = f(w) + G1 with G0, G1 the values of g0, g1 at s(w), computed
 *    recursively. Each step is invertible, which gives the inverse transform.
 *    Cost: (N/2) log N multiplications per transform and O(N log^2 N) word XORs in the expansions.
 * Values are kept in the order "point index bits reversed", which the pointwise product ignores; the
 * twiddle w at a level is stepped through that order by XOR with prefix sums of the basis.
 * 4. The input is split into r blocks of b = ceil(n / r) bits: y = T x = sum_q T_q x_q, T_q the m x b
 *    Toeplitz block of the columns of x_q = x[qb, qb + b), itself the middle (from coefficient b - 1) of the
 *    product u_q * x_q with u_q = u[n - (q+1) b, n - (q+1) b + m + b - 1) (bits before u's start are 0; they
 *    meet only input bits past n, which are 0). Each product has m + 2b - 1 bits instead of m + 2n - 1, so
 *    the transforms are shorter; the r products are summed in the transform domain and transformed back
 *    once: 2r + 1 transforms of 2^K' points instead of 3 of 2^K. fft_plan takes the r of least
 *    (2r + 1) K' 2^K' (n = 2^27, m = 2^26: r = 4, 2^22 points instead of 2^24, 31 % less; the same bits).
 */
#include "qkd_toeplitz_fft.h"

#include "clmul.h"
#include "qkd_bits.h"
#include "qkd_toeplitz.h"

#include <string.h>

#define CHUNK_BITS 32
#define MIN_LOG 1
/* Levels up to SMALL_LOG (blocks of 2^12 words, 32 KiB) are done level by level inside the block,
 * with the twiddles of every such level in one table (level j at offset 2^(j-1) - 1); larger levels
 * recurse depth first so that each block is in cache when its small levels run. */
#define SMALL_LOG 12
#define ROW_TILE_WORDS 256 /* columns per tile of a row transform: 2^9 rows of 2 KiB at most */
#define BASE_LOG 8 /* radix 2 up to 2^8 points, split above (a power of two: see fft in the _impl.h) */
#define NATURAL_TWIDDLES_AT ((size_t)1 << SMALL_LOG) /* then nat[p] = sum_j bit_j(p) beta_(j+1), p < 2^9 */
#define NATURAL_TWIDDLES 512
#define TWIDDLE_TABLE_WORDS (NATURAL_TWIDDLES_AT + NATURAL_TWIDDLES)

#define MAX_BLOCKS 16 /* input blocks tried by fft_plan (step 4 above) */

struct fft_layout {
    size_t log, len, blocks, block_bits, u_words;
    size_t acc_off, a_off, b_off, tmp_off, tw_off, u_off, total;
};

/* Transform length (log) for the product of a block of b input bits with its m + b - 1 seed bits. */
static size_t block_log(size_t m_bits, size_t b_bits)
{
    size_t u_chunks = (m_bits + b_bits - 1 + CHUNK_BITS - 1) / CHUNK_BITS;
    size_t x_chunks = (b_bits + CHUNK_BITS - 1) / CHUNK_BITS;
    size_t prod_chunks = u_chunks + x_chunks - 1, log = MIN_LOG;
    while (((size_t)1 << log) < prod_chunks)
        log++;
    return log;
}

static int fft_plan(size_t n_bits, size_t m_bits, struct fft_layout *lay)
{
    if (n_bits == 0 || m_bits == 0 || m_bits > n_bits || n_bits > (size_t)QKD_TOEPLITZ_MAX_BITS)
        return QKD_EINVAL;
    size_t l_bits = n_bits + m_bits - 1, best_cost = 0;
    lay->blocks = 0;
    for (size_t r = 1; r <= MAX_BLOCKS && r <= n_bits; r++) {
        size_t b = (n_bits + r - 1) / r, log = block_log(m_bits, b);
        if (log > QKD_TOEPLITZ_FFT_MAX_LOG)
            continue;
        size_t cost = (2 * r + 1) * log << log; /* transforms of 2^log points, (log/2) 2^log products each */
        if (lay->blocks == 0 || cost < best_cost) {
            best_cost = cost;
            lay->blocks = r;
            lay->block_bits = b;
            lay->log = log;
        }
    }
    if (lay->blocks == 0)
        return QKD_EINVAL;
    lay->len = (size_t)1 << lay->log;
    lay->u_words = qkd_words_for_bits(l_bits) + 1; /* one spare word: rotate_seed_words writes word pairs */
    lay->acc_off = 0;
    lay->a_off = lay->acc_off + (lay->blocks > 1 ? lay->len : 0); /* one block: the product stays in a */
    lay->b_off = lay->a_off + lay->len;
    lay->tmp_off = lay->b_off + lay->len;
    lay->tw_off = lay->tmp_off + ((size_t)1 << BASE_LOG) / 2; /* (de)interleaving happens in blocks of <= 2^BASE_LOG */
    lay->u_off = lay->tw_off + TWIDDLE_TABLE_WORDS;
    lay->total = lay->u_off + lay->u_words;
    return QKD_OK;
}

size_t qkd_toeplitz_fft_scratch_words(size_t n_bits, size_t m_bits)
{
    struct fft_layout lay;
    return fft_plan(n_bits, m_bits, &lay) == QKD_OK ? lay.total : 0;
}

/* ---- GF(2^64) arithmetic, z^64 = z^4 + z^3 + z + 1 ---- */
#define GF64_POLY 0x1Bu

static uint64_t gf64_mul_soft(uint64_t a, uint64_t b)
{
    uint64_t lo, hi, tlo, thi, ulo, uhi;
    qkd_clmul64_soft(a, b, &lo, &hi);
    qkd_clmul64_soft(hi, GF64_POLY, &tlo, &thi);
    qkd_clmul64_soft(thi, GF64_POLY, &ulo, &uhi);
    return lo ^ tlo ^ ulo;
}

/* Solve x^2 + x = c (a GF(2)-linear map with kernel {0, 1}) by Gaussian elimination; 0 on success. */
static int solve_artin_schreier(uint64_t c, uint64_t *x)
{
    uint64_t piv_vec[64] = {0}, piv_comb[64] = {0};
    for (unsigned i = 0; i < 64; i++) {
        uint64_t e = (uint64_t)1 << i;
        uint64_t vec = gf64_mul_soft(e, e) ^ e, comb = e;
        while (vec) {
            unsigned top = 63u - (unsigned)__builtin_clzll(vec);
            if (!piv_vec[top]) {
                piv_vec[top] = vec;
                piv_comb[top] = comb;
                break;
            }
            vec ^= piv_vec[top];
            comb ^= piv_comb[top];
        }
    }
    uint64_t comb = 0;
    while (c) {
        unsigned top = 63u - (unsigned)__builtin_clzll(c);
        if (!piv_vec[top])
            return -1;
        c ^= piv_vec[top];
        comb ^= piv_comb[top];
    }
    *x = comb;
    return 0;
}

/* beta[0..count): a Cantor basis of GF(2^64). Computed once per call (microseconds). */
static int cantor_basis(uint64_t *beta, size_t count)
{
    beta[0] = 1;
    for (size_t i = 1; i < count; i++)
        if (solve_artin_schreier(beta[i - 1], &beta[i]) != 0)
            return -1;
    return 0;
}

/* Twiddle steps for level k (2^k points): the twiddle at position p < 2^(k-1) is
 * sum_j bit_j(p) beta_(k-1-j); going from p to p + 1 flips bits 0..t, t = ctz(p + 1), so the twiddle
 * changes by step[t] = beta_(k-1) + ... + beta_(k-1-t). */
static void twiddle_steps(const uint64_t *beta, unsigned k, uint64_t *step)
{
    uint64_t acc = 0;
    for (unsigned t = 0; t + 1 < k; t++) {
        acc ^= beta[k - 1 - t];
        step[t] = acc;
    }
}

static void twiddle_table(const uint64_t *beta, unsigned max_level, uint64_t *tw)
{
    uint64_t *nat = tw + NATURAL_TWIDDLES_AT;
    nat[0] = 0;
    for (size_t p = 1; p < NATURAL_TWIDDLES; p++)
        nat[p] = nat[p & (p - 1)] ^ beta[__builtin_ctzll(p) + 1];
    for (unsigned j = 1; j <= max_level; j++) {
        uint64_t step[64], w = 0, *t = tw + ((size_t)1 << (j - 1)) - 1;
        twiddle_steps(beta, j, step);
        for (size_t p = 0; p < ((size_t)1 << (j - 1)); p++) {
            t[p] = w;
            w ^= step[__builtin_ctzll(p + 1)];
        }
    }
}

static inline const uint64_t *twiddles_of_level(const uint64_t *tw, unsigned j)
{
    return tw + ((size_t)1 << (j - 1)) - 1;
}

#ifdef QKD_HAVE_X86
#define FFT_ATTR __attribute__((target("pclmul,sse4.1")))
#define FFT_NAME(x) x##_pclmul
#include "toeplitz_fft_impl.h"
#undef FFT_ATTR
#undef FFT_NAME

#define FFT_ATTR __attribute__((target("avx512f,avx512bw,avx512vl,vpclmulqdq,pclmul,sse4.1")))
#define FFT_NAME(x) x##_avx512
#define FFT_VECTOR 1
#include "toeplitz_fft_impl.h"
#undef FFT_ATTR
#undef FFT_NAME
#undef FFT_VECTOR
#endif

/* The 64 bits src[pos, pos + 64) of an nbits-long array (pos >= 0); bits at or past nbits read as 0. */
static inline uint64_t bits_at(const uint64_t *src, size_t nbits, size_t pos)
{
    if (pos >= nbits)
        return 0;
    size_t w = pos >> 6;
    unsigned s = (unsigned)(pos & 63);
    uint64_t v = src[w] >> s;
    if (s != 0 && (w + 1) * 64 < nbits)
        v |= src[w + 1] << (64 - s);
    if (nbits - pos < 64)
        v &= ((uint64_t)1 << (nbits - pos)) - 1;
    return v;
}

/* u[0, L) = s rotated left by m: u[k] = s[(k + m) mod L]; words past L zero. */
static void rotate_seed_words(uint64_t *u, size_t u_words, const uint64_t *seed, size_t n_bits, size_t m_bits)
{
    size_t l_bits = n_bits + m_bits - 1, head = n_bits - 1; /* u[0, head) = s[m, L) */
    memset(u, 0, u_words * sizeof(uint64_t));
    for (size_t w = 0; w * 64 < head; w++) {
        uint64_t v = bits_at(seed, l_bits, m_bits + w * 64);
        if (head - w * 64 < 64)
            v &= ((uint64_t)1 << (head - w * 64)) - 1;
        u[w] = v;
    }
    for (size_t w = 0; w * 64 < m_bits; w++) { /* u[head, L) = s[0, m) */
        uint64_t v = bits_at(seed, m_bits, w * 64);
        size_t at = head + w * 64, aw = at >> 6;
        unsigned sh = (unsigned)(at & 63);
        u[aw] |= v << sh;
        if (sh)
            u[aw + 1] |= v >> (64 - sh);
    }
}

/* chunks[0, len) = the 32-bit pieces of bits[start, start + count) of an nbits-long array, zero-padded: bits
 * before the array's start (start < 0) or past its end read as 0, and so do the chunks from ceil(count / 32) on. */
static void chunks_of(uint64_t *chunks, size_t len, const uint64_t *bits, size_t nbits, int64_t start, size_t count)
{
    size_t used = (count + CHUNK_BITS - 1) / CHUNK_BITS;
    for (size_t c = 0; c < used; c++) {
        int64_t pos = start + (int64_t)(c * CHUNK_BITS);
        uint64_t v;
        if (pos >= 0)
            v = bits_at(bits, nbits, (size_t)pos);
        else if (pos + CHUNK_BITS > 0)
            v = bits_at(bits, nbits, 0) << (unsigned)(-pos);
        else
            v = 0;
        size_t left = count - c * CHUNK_BITS;
        v &= left < CHUNK_BITS ? ((uint64_t)1 << left) - 1 : 0xFFFFFFFFu;
        chunks[c] = v;
    }
    memset(chunks + used, 0, (len - used) * sizeof(uint64_t));
}

/* Word w of the binary product whose 63-bit chunk coefficients c[k] sit at bit 32k. */
static inline uint64_t product_word(const uint64_t *c, size_t len, size_t w)
{
    uint64_t v = 2 * w < len ? c[2 * w] : 0;
    if (2 * w + 1 < len)
        v ^= c[2 * w + 1] << 32;
    if (w > 0 && 2 * w - 1 < len)
        v ^= c[2 * w - 1] >> 32;
    return v;
}

int qkd_toeplitz_hash_fft(const uint64_t *seed, size_t seed_words, const uint64_t *input, size_t input_words,
                          size_t n_bits, size_t m_bits, uint64_t *out, size_t out_words, uint64_t *scratch,
                          size_t scratch_words, uint32_t features)
{
    struct fft_layout lay;
    if (fft_plan(n_bits, m_bits, &lay) != QKD_OK)
        return QKD_EINVAL;
    size_t l_bits = n_bits + m_bits - 1;
    if (seed_words < qkd_words_for_bits(l_bits) || input_words < qkd_words_for_bits(n_bits))
        return QKD_ERANGE;
    if (out_words < qkd_words_for_bits(m_bits) || scratch_words < lay.total)
        return QKD_ENOMEM;
#ifdef QKD_HAVE_X86
    if (!(features & QKD_CPU_PCLMUL))
        return QKD_EINVAL;
    uint64_t beta[64];
    if (cantor_basis(beta, QKD_TOEPLITZ_FFT_MAX_LOG + 1) != 0)
        return QKD_EINVAL; /* unreachable: a Cantor basis exists in GF(2^(2^j)) */
    uint64_t *a = scratch + lay.a_off, *b = scratch + lay.b_off, *tmp = scratch + lay.tmp_off;
    uint64_t *u = scratch + lay.u_off, *tw = scratch + lay.tw_off;
    uint64_t *acc = lay.blocks > 1 ? scratch + lay.acc_off : a;
    unsigned k = (unsigned)lay.log;
    int wide = (features & QKD_CPU_VPCLMUL) && (features & QKD_CPU_AVX512F);
    twiddle_table(beta, k < BASE_LOG ? k : BASE_LOG, tw);
    rotate_seed_words(u, lay.u_words, seed, n_bits, m_bits);
    size_t bb = lay.block_bits;
    for (size_t q = 0; q < lay.blocks; q++) { /* step 4: u_q * x_q, summed in the transform domain */
        int64_t u_start = (int64_t)n_bits - (int64_t)((q + 1) * bb);
        chunks_of(a, lay.len, u, l_bits, u_start, m_bits + bb - 1);
        chunks_of(b, lay.len, input, n_bits, (int64_t)(q * bb), bb);
        if (wide)
            multiply_accumulate_avx512(acc, a, b, k, beta, tw, tmp, q == 0);
        else
            multiply_accumulate_pclmul(acc, a, b, k, beta, tw, tmp, q == 0);
    }
    if (wide)
        interpolate_avx512(acc, k, beta, tw, tmp);
    else
        interpolate_pclmul(acc, k, beta, tw, tmp);
    /* y[0, m) = product bits [b - 1, b - 1 + m) */
    size_t words = qkd_words_for_bits(m_bits), first = (bb - 1) >> 6;
    unsigned sh = (unsigned)((bb - 1) & 63);
    for (size_t w = 0; w < words; w++) {
        uint64_t v = product_word(acc, lay.len, first + w) >> sh;
        if (sh)
            v |= product_word(acc, lay.len, first + w + 1) << (64 - sh);
        out[w] = v;
    }
    if (m_bits % 64)
        out[words - 1] &= ((uint64_t)1 << (m_bits % 64)) - 1;
    for (size_t w = words; w < out_words; w++)
        out[w] = 0;
    return QKD_OK;
#else
    return QKD_EINVAL;
#endif
}
