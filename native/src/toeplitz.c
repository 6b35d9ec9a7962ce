/* toeplitz.c - Toeplitz hashing y = T(s) x over GF(2) as a middle product of polynomials.
 *
 * With u = s rotated left by m (u[k] = s[(k + m) mod L], L = n + m - 1), T[i][j] = s[(i - j) mod L]
 * = u[i + n - 1 - j], so y[i] is the coefficient of x^(i + n - 1) in u(x) * x(x) (the product's
 * middle m coefficients). The input is cut into blocks of B bits (B about m, a whole number of
 * words); block b starting at bit j0 contributes the coefficients B-1 .. B+m-2 of W_b * X_b, where
 * X_b = x[j0, j0 + B) and W_b[k] = u[k + n - j0 - B] for k in [0, B + m - 1) (zero below u[0]).
 * Each block product is a Karatsuba multiplication (gf2x_impl.h). Cost: (n/B) products of about
 * 2B x B bits, which for B ~ m is far less than the full (n+m) x n product when m << n.
 * The multiply is chosen per call from the caller's feature bits: AVX-512 VPCLMULQDQ (four 64-bit
 * carry-less products per instruction), 128-bit PCLMULQDQ, or portable C with product tables.
 */
#include "qkd_toeplitz.h"

#include "clmul.h"
#include "qkd_bits.h"

#include <string.h>

/* Schoolbook at or below this many words (CPU time at n = 2^20 on AMD EPYC, Zen 4): PCLMUL 16
 * (12..24 alike, 32 slower), VPCLMUL 32 (8.1 ms against 13.7 ms at 16 and 8.4 ms at 48). The
 * scratch size is computed for the smaller threshold, which recurses deeper and needs more. */
#define BASE_WORDS 16
#define VPCLMUL_BASE_WORDS 32
#define GF2X_BASE BASE_WORDS

/* Portable schoolbook: one product table per word of a, reused across the words of b. */
static void gf2x_base_soft(uint64_t *r, const uint64_t *a, const uint64_t *b, size_t n)
{
    memset(r, 0, 2 * n * sizeof(uint64_t));
    for (size_t i = 0; i < n; i++) {
        struct qkd_clmul_table t;
        qkd_clmul_table_init(&t, a[i]);
        uint64_t carry = 0;
        for (size_t j = 0; j < n; j++) {
            uint64_t lo, hi;
            qkd_clmul64_table(&t, b[j], &lo, &hi);
            r[i + j] ^= lo ^ carry;
            carry = hi;
        }
        r[i + n] ^= carry;
    }
}

#define GF2X_NAME(x) x##_soft
#define GF2X_ATTR
#define GF2X_CLMUL qkd_clmul64_soft
#define GF2X_BASEMUL gf2x_base_soft
#include "gf2x_impl.h"
#undef GF2X_NAME
#undef GF2X_ATTR
#undef GF2X_CLMUL
#undef GF2X_BASEMUL

#ifdef QKD_HAVE_X86
#define PCLMUL_ATTR __attribute__((target("pclmul,sse4.1")))
/* r[0, 2n) = a * b for n <= BASE_WORDS, on 128-bit word pairs by product scanning: with A_i =
 * (a[2i], a[2i+1]) and B_j likewise, pair column c collects the sum over i + j = c of lo*lo (words
 * 2c, 2c+1), lo*hi + hi*lo (words 2c+1, 2c+2) and hi*hi (words 2c+2, 2c+3). Each column is finished
 * in registers and stored once; what spills into the next column is carried. */
PCLMUL_ATTR static void gf2x_base_pclmul(uint64_t *r, const uint64_t *a, const uint64_t *b, size_t n)
{
    __m128i pa[GF2X_BASE / 2 + 1], pb[GF2X_BASE / 2 + 1];
    size_t pairs = (n + 1) / 2;
    memcpy(pa, a, n * sizeof(uint64_t));
    memcpy(pb, b, n * sizeof(uint64_t));
    if (n & 1) {
        ((uint64_t *)pa)[n] = 0;
        ((uint64_t *)pb)[n] = 0;
    }
    __m128i out[GF2X_BASE + 1];
    __m128i carry = _mm_setzero_si128();
    for (size_t c = 0; c + 1 < 2 * pairs; c++) {
        size_t lo = c < pairs ? 0 : c - pairs + 1, hi = c < pairs ? c : pairs - 1;
        __m128i even = _mm_setzero_si128(), odd = _mm_setzero_si128(), top = _mm_setzero_si128();
        for (size_t i = lo; i <= hi; i++) {
            __m128i x = pa[i], y = pb[c - i];
            even = _mm_xor_si128(even, _mm_clmulepi64_si128(x, y, 0x00));
            top = _mm_xor_si128(top, _mm_clmulepi64_si128(x, y, 0x11));
            odd = _mm_xor_si128(odd, _mm_xor_si128(_mm_clmulepi64_si128(x, y, 0x01),
                                                    _mm_clmulepi64_si128(x, y, 0x10)));
        }
        out[c] = _mm_xor_si128(_mm_xor_si128(even, _mm_slli_si128(odd, 8)), carry);
        carry = _mm_xor_si128(top, _mm_srli_si128(odd, 8));
    }
    out[2 * pairs - 1] = carry;
    memcpy(r, out, 2 * n * sizeof(uint64_t));
}

#define VPCLMUL_ATTR __attribute__((target("avx512f,avx2,vpclmulqdq,pclmul,sse4.1")))
/* The same product scanning with four pairs per instruction: for pair column c, lane L of a step
 * multiplies A_(i+L) by B_(c-i-L). B is stored reversed (rb[4 + P-1-j] = B_j) between zero pairs, so
 * the four B_(c-i-L) are one contiguous load, and lanes past either end multiply by zero. The three
 * column sums are folded across lanes once per column. */
VPCLMUL_ATTR static inline __m128i fold_lanes(__m512i v)
{
    __m256i h = _mm256_xor_si256(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
    return _mm_xor_si128(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

VPCLMUL_ATTR static void gf2x_base_vpclmul(uint64_t *r, const uint64_t *a, const uint64_t *b, size_t n)
{
    enum { MAXP = VPCLMUL_BASE_WORDS / 2 + 1 };
    __m128i pa[MAXP + 4], rb[MAXP + 8];
    size_t pairs = (n + 1) / 2;
    memset(pa, 0, sizeof pa);
    memset(rb, 0, sizeof rb);
    memcpy(pa, a, n * sizeof(uint64_t));
    for (size_t j = 0; j < pairs; j++) {
        uint64_t w[2] = {b[2 * j], 2 * j + 1 < n ? b[2 * j + 1] : 0};
        memcpy(&rb[4 + pairs - 1 - j], w, sizeof w);
    }
    __m128i out[VPCLMUL_BASE_WORDS + 1];
    __m128i carry = _mm_setzero_si128();
    for (size_t c = 0; c + 1 < 2 * pairs; c++) {
        size_t lo = c < pairs ? 0 : c - pairs + 1, hi = c < pairs ? c : pairs - 1;
        __m512i even = _mm512_setzero_si512(), odd = _mm512_setzero_si512(), top = _mm512_setzero_si512();
        for (size_t i = lo; i <= hi; i += 4) {
            __m512i x = _mm512_loadu_si512((const void *)&pa[i]);
            __m512i y = _mm512_loadu_si512((const void *)&rb[pairs + 3 - c + i]);
            even = _mm512_xor_si512(even, _mm512_clmulepi64_epi128(x, y, 0x00));
            top = _mm512_xor_si512(top, _mm512_clmulepi64_epi128(x, y, 0x11));
            odd = _mm512_ternarylogic_epi64(odd, _mm512_clmulepi64_epi128(x, y, 0x01),
                                            _mm512_clmulepi64_epi128(x, y, 0x10), 0x96);
        }
        __m128i e = fold_lanes(even), o = fold_lanes(odd), t = fold_lanes(top);
        out[c] = _mm_xor_si128(_mm_xor_si128(e, _mm_slli_si128(o, 8)), carry);
        carry = _mm_xor_si128(t, _mm_srli_si128(o, 8));
    }
    out[2 * pairs - 1] = carry;
    memcpy(r, out, 2 * n * sizeof(uint64_t));
}

#undef GF2X_BASE
#define GF2X_BASE VPCLMUL_BASE_WORDS
#define GF2X_NAME(x) x##_vpclmul
#define GF2X_ATTR VPCLMUL_ATTR
#define GF2X_CLMUL qkd_clmul64_pclmul
#define GF2X_BASEMUL gf2x_base_vpclmul
#include "gf2x_impl.h"
#undef GF2X_NAME
#undef GF2X_ATTR
#undef GF2X_CLMUL
#undef GF2X_BASEMUL
#undef GF2X_BASE
#define GF2X_BASE BASE_WORDS

#define GF2X_NAME(x) x##_pclmul
#define GF2X_ATTR PCLMUL_ATTR
#define GF2X_CLMUL qkd_clmul64_pclmul
#define GF2X_BASEMUL gf2x_base_pclmul
#include "gf2x_impl.h"
#undef GF2X_NAME
#undef GF2X_ATTR
#undef GF2X_CLMUL
#undef GF2X_BASEMUL
#endif

#define MIN_BLOCK_WORDS 16

static size_t kara_scratch_words(size_t n)
{
    size_t total = 0;
    while (n > BASE_WORDS) {
        size_t h = (n + 1) / 2;
        total += 4 * h;
        n = h;
    }
    return total;
}

/* Block size in words for n input and m output bits. */
static size_t block_words(size_t n_bits, size_t m_bits)
{
    size_t bw = qkd_words_for_bits(m_bits);
    if (bw < MIN_BLOCK_WORDS)
        bw = MIN_BLOCK_WORDS;
    size_t nw = qkd_words_for_bits(n_bits);
    return bw < nw ? bw : nw;
}

struct layout {
    size_t block_w, blocks, window_bits, window_w, prod_w;
    size_t u_off, x_off, w_off, p_off, mul_off, total;
};

static int plan(size_t n_bits, size_t m_bits, struct layout *lay)
{
    if (n_bits == 0 || m_bits == 0 || m_bits > n_bits || n_bits > (size_t)QKD_TOEPLITZ_MAX_BITS)
        return QKD_EINVAL;
    size_t l_bits = n_bits + m_bits - 1;
    lay->block_w = block_words(n_bits, m_bits);
    size_t nw = qkd_words_for_bits(n_bits);
    lay->blocks = (nw + lay->block_w - 1) / lay->block_w;
    lay->window_bits = lay->block_w * 64 + m_bits - 1;
    lay->window_w = qkd_words_for_bits(lay->window_bits);
    size_t pieces = (lay->window_w + lay->block_w - 1) / lay->block_w;
    lay->prod_w = pieces * lay->block_w + lay->block_w;
    lay->u_off = 0;
    lay->x_off = lay->u_off + qkd_words_for_bits(l_bits);
    lay->w_off = lay->x_off + lay->blocks * lay->block_w;
    lay->p_off = lay->w_off + lay->window_w;
    lay->mul_off = lay->p_off + lay->prod_w;
    lay->total = lay->mul_off + 3 * lay->block_w + kara_scratch_words(lay->block_w);
    return QKD_OK;
}

size_t qkd_toeplitz_scratch_words(size_t n_bits, size_t m_bits)
{
    struct layout lay;
    return plan(n_bits, m_bits, &lay) == QKD_OK ? lay.total : 0;
}

/* The 64 bits src[pos, pos + 64) of an nbits-long array; positions outside [0, nbits) read as 0. */
static inline uint64_t load_bits64(const uint64_t *src, size_t nbits, int64_t pos)
{
    if (pos <= -64 || pos >= (int64_t)nbits)
        return 0;
    if (pos < 0)
        return load_bits64(src, nbits, 0) << (unsigned)(-pos);
    size_t p = (size_t)pos, w = p >> 6;
    unsigned s = (unsigned)(p & 63);
    uint64_t v = src[w] >> s;
    if (s != 0 && (w + 1) * 64 < nbits)
        v |= src[w + 1] << (64 - s);
    size_t avail = nbits - p;
    if (avail < 64)
        v &= ((uint64_t)1 << avail) - 1;
    return v;
}

/* dst[0, dst_bits) = src[pos, pos + dst_bits) (zero outside src); dst's unused high bits cleared. */
static void copy_bits(uint64_t *dst, size_t dst_bits, const uint64_t *src, size_t src_bits, int64_t pos)
{
    size_t words = qkd_words_for_bits(dst_bits);
    for (size_t w = 0; w < words; w++)
        dst[w] = load_bits64(src, src_bits, pos + (int64_t)(w * 64));
    if (dst_bits % 64)
        dst[words - 1] &= ((uint64_t)1 << (dst_bits % 64)) - 1;
}

/* dst[0, dst_bits) ^= src[pos, pos + dst_bits). */
static void xor_bits(uint64_t *dst, size_t dst_bits, const uint64_t *src, size_t src_bits, int64_t pos)
{
    size_t words = qkd_words_for_bits(dst_bits);
    for (size_t w = 0; w < words; w++) {
        uint64_t v = load_bits64(src, src_bits, pos + (int64_t)(w * 64));
        if (w == words - 1 && dst_bits % 64)
            v &= ((uint64_t)1 << (dst_bits % 64)) - 1;
        dst[w] ^= v;
    }
}

typedef void (*gf2x_mul_fn)(uint64_t *, const uint64_t *, size_t, const uint64_t *, size_t, uint64_t *);

int qkd_toeplitz_hash(const uint64_t *seed, size_t seed_words, const uint64_t *input, size_t input_words,
                      size_t n_bits, size_t m_bits, uint64_t *out, size_t out_words, uint64_t *scratch,
                      size_t scratch_words, uint32_t features)
{
    struct layout lay;
    if (plan(n_bits, m_bits, &lay) != QKD_OK)
        return QKD_EINVAL;
    size_t l_bits = n_bits + m_bits - 1;
    if (seed_words < qkd_words_for_bits(l_bits) || input_words < qkd_words_for_bits(n_bits))
        return QKD_ERANGE;
    if (out_words < qkd_words_for_bits(m_bits) || scratch_words < lay.total)
        return QKD_ENOMEM;

    gf2x_mul_fn mul = gf2x_mul_soft;
#ifdef QKD_HAVE_X86
    if (features & QKD_CPU_PCLMUL)
        mul = gf2x_mul_pclmul;
    if ((features & QKD_CPU_VPCLMUL) && (features & QKD_CPU_AVX512F))
        mul = gf2x_mul_vpclmul;
#endif
    uint64_t *u = scratch + lay.u_off, *x = scratch + lay.x_off, *win = scratch + lay.w_off;
    uint64_t *prod = scratch + lay.p_off, *mul_scratch = scratch + lay.mul_off;

    /* u = s rotated left by m: u[0, n-1) = s[m, L), u[n-1, L) = s[0, m). */
    copy_bits(u, l_bits, seed, l_bits, (int64_t)m_bits);
    for (size_t w = 0; w < qkd_words_for_bits(m_bits); w++) {
        uint64_t v = load_bits64(seed, m_bits, (int64_t)(w * 64));
        /* place s[64w, 64w + 64) at u bit n - 1 + 64w */
        size_t at = n_bits - 1 + w * 64, aw = at >> 6;
        unsigned sh = (unsigned)(at & 63);
        u[aw] |= v << sh;
        if (sh && aw + 1 < qkd_words_for_bits(l_bits))
            u[aw + 1] |= v >> (64 - sh);
    }
    /* x zero-padded to whole blocks. */
    copy_bits(x, lay.blocks * lay.block_w * 64, input, n_bits, 0);

    memset(out, 0, out_words * sizeof(uint64_t));
    size_t bbits = lay.block_w * 64;
    for (size_t b = 0; b < lay.blocks; b++) {
        size_t j0 = b * bbits;
        int64_t start = (int64_t)n_bits - (int64_t)j0 - (int64_t)bbits;
        copy_bits(win, lay.window_bits, u, l_bits, start);
        mul(prod, win, lay.window_w, x + b * lay.block_w, lay.block_w, mul_scratch);
        xor_bits(out, m_bits, prod, lay.prod_w * 64, (int64_t)(bbits - 1));
    }
    return QKD_OK;
}
