/* toeplitz_fft_impl.h - the additive FFT of toeplitz_fft.c, included once per instruction set with
 * FFT_NAME(x) (the instance's name for x), FFT_ATTR (its target attribute) and, for the AVX-512
 * instance, FFT_VECTOR (butterflies and products eight elements at a time with VPCLMULQDQ).
 * Internal to native/src. Theory of operation: see toeplitz_fft.c.
 */

FFT_ATTR static inline uint64_t FFT_NAME(gf64_mul)(uint64_t a, uint64_t b)
{
    const __m128i poly = _mm_cvtsi64_si128((long long)GF64_POLY);
    __m128i p = _mm_clmulepi64_si128(_mm_cvtsi64_si128((long long)a), _mm_cvtsi64_si128((long long)b), 0x00);
    __m128i t = _mm_clmulepi64_si128(p, poly, 0x01); /* hi(p) * poly: at most 68 bits */
    __m128i u = _mm_clmulepi64_si128(t, poly, 0x01); /* hi(t) * poly: at most 8 bits */
    return (uint64_t)_mm_cvtsi128_si64(_mm_xor_si128(_mm_xor_si128(p, t), u));
}

#ifdef FFT_VECTOR
/* Eight products at once: even elements in the low qword of each 128-bit lane, odd ones in the high. */
FFT_ATTR static inline __m512i FFT_NAME(gf64_mul8)(__m512i x, __m512i y)
{
    const __m512i poly = _mm512_set1_epi64((long long)GF64_POLY);
    __m512i pe = _mm512_clmulepi64_epi128(x, y, 0x00), po = _mm512_clmulepi64_epi128(x, y, 0x11);
    __m512i te = _mm512_clmulepi64_epi128(pe, poly, 0x01), to = _mm512_clmulepi64_epi128(po, poly, 0x01);
    __m512i ue = _mm512_clmulepi64_epi128(te, poly, 0x01), uo = _mm512_clmulepi64_epi128(to, poly, 0x01);
    return _mm512_unpacklo_epi64(_mm512_ternarylogic_epi64(pe, te, ue, 0x96),
                                 _mm512_ternarylogic_epi64(po, to, uo, 0x96));
}
#endif

FFT_ATTR static inline void FFT_NAME(xor_into)(uint64_t *restrict dst, const uint64_t *restrict src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] ^= src[i];
}

/* Taylor expansion at y^2 + y of a[0, n), n a power of two, in place: afterwards
 * f(y) = sum_i (a[2i] + a[2i+1] y) (y^2 + y)^i. With q = n/4, t = (y^2+y)^q = y^(2q) + y^q:
 * f = f0 + y^(2q) f1 + y^(3q) f2 = [f0 + y^q (f1 + f2)] + t [(f1 + f2) + y^q f2].
 * Elements are rows of `width` words (width 1: the coefficients themselves; see taylor below). */
FFT_ATTR static inline void FFT_NAME(taylor_fixed)(uint64_t *a, const size_t n)
{
    for (size_t q = n / 4; q >= 1; q /= 2)
        for (size_t b = 0; b < n; b += 4 * q)
            for (size_t i = 0; i < q; i++) {
                a[b + 2 * q + i] ^= a[b + 3 * q + i];
                a[b + q + i] ^= a[b + 2 * q + i];
            }
}

FFT_ATTR static inline void FFT_NAME(taylor_inverse_fixed)(uint64_t *a, const size_t n)
{
    for (size_t q = 1; q <= n / 4; q *= 2)
        for (size_t b = 0; b < n; b += 4 * q)
            for (size_t i = 0; i < q; i++) {
                a[b + q + i] ^= a[b + 2 * q + i];
                a[b + 2 * q + i] ^= a[b + 3 * q + i];
            }
}

FFT_ATTR static void FFT_NAME(taylor_rows)(uint64_t *a, size_t n, size_t width)
{
    if (n <= 2)
        return;
    if (width == 1 && n <= 32) {
        switch (n) {
        case 4: FFT_NAME(taylor_fixed)(a, 4); return;
        case 8: FFT_NAME(taylor_fixed)(a, 8); return;
        case 16: FFT_NAME(taylor_fixed)(a, 16); return;
        default: FFT_NAME(taylor_fixed)(a, 32); return;
        }
    }
    size_t q = n / 4;
    FFT_NAME(xor_into)(a + 2 * q * width, a + 3 * q * width, q * width);
    FFT_NAME(xor_into)(a + q * width, a + 2 * q * width, q * width);
    FFT_NAME(taylor_rows)(a, n / 2, width);
    FFT_NAME(taylor_rows)(a + n / 2 * width, n / 2, width);
}

FFT_ATTR static void FFT_NAME(taylor_inverse_rows)(uint64_t *a, size_t n, size_t width)
{
    if (n <= 2)
        return;
    if (width == 1 && n <= 32) {
        switch (n) {
        case 4: FFT_NAME(taylor_inverse_fixed)(a, 4); return;
        case 8: FFT_NAME(taylor_inverse_fixed)(a, 8); return;
        case 16: FFT_NAME(taylor_inverse_fixed)(a, 16); return;
        default: FFT_NAME(taylor_inverse_fixed)(a, 32); return;
        }
    }
    size_t q = n / 4;
    FFT_NAME(taylor_inverse_rows)(a, n / 2, width);
    FFT_NAME(taylor_inverse_rows)(a + n / 2 * width, n / 2, width);
    FFT_NAME(xor_into)(a + q * width, a + 2 * q * width, q * width);
    FFT_NAME(xor_into)(a + 2 * q * width, a + 3 * q * width, q * width);
}

/* a[0, n) = evens then odds; tmp holds n/2 words. */
FFT_ATTR static void FFT_NAME(deinterleave)(uint64_t *a, size_t n, uint64_t *tmp)
{
    size_t h = n / 2;
    for (size_t i = 0; i < h; i++) {
        tmp[i] = a[2 * i + 1];
        a[i] = a[2 * i];
    }
    memcpy(a + h, tmp, h * sizeof(uint64_t));
}

FFT_ATTR static void FFT_NAME(interleave)(uint64_t *a, size_t n, uint64_t *tmp)
{
    size_t h = n / 2;
    memcpy(tmp, a + h, h * sizeof(uint64_t));
    for (size_t i = h; i-- > 0;) {
        a[2 * i] = a[i];
        a[2 * i + 1] = tmp[i];
    }
}

/* Butterflies of level k (h = 2^(k-1) pairs) on points c + W_k: the twiddle at p is c + tw[p], tw the
 * level's table. inverse undoes the forward butterfly. */
FFT_ATTR static void FFT_NAME(butterflies)(uint64_t *a, unsigned k, const uint64_t *tw, uint64_t c, int inverse)
{
    size_t h = (size_t)1 << (k - 1), p = 0;
#ifdef FFT_VECTOR
    __m512i cv = _mm512_set1_epi64((long long)c);
    for (; p + 8 <= h; p += 8) {
        __m512i wv = _mm512_xor_si512(_mm512_loadu_si512((const void *)(tw + p)), cv);
        __m512i x = _mm512_loadu_si512((const void *)(a + p)), y = _mm512_loadu_si512((const void *)(a + h + p));
        if (!inverse) {
            __m512i v = _mm512_xor_si512(x, FFT_NAME(gf64_mul8)(wv, y));
            _mm512_storeu_si512((void *)(a + p), v);
            _mm512_storeu_si512((void *)(a + h + p), _mm512_xor_si512(v, y));
        } else {
            __m512i g1 = _mm512_xor_si512(x, y);
            _mm512_storeu_si512((void *)(a + p), _mm512_xor_si512(x, FFT_NAME(gf64_mul8)(wv, g1)));
            _mm512_storeu_si512((void *)(a + h + p), g1);
        }
    }
#endif
    for (; p < h; p++) {
        uint64_t w = c ^ tw[p];
        if (!inverse) {
            uint64_t g1 = a[h + p], v = a[p] ^ FFT_NAME(gf64_mul)(w, g1);
            a[p] = v;
            a[h + p] = v ^ g1;
        } else {
            uint64_t v = a[p], g1 = v ^ a[h + p];
            a[p] = v ^ FFT_NAME(gf64_mul)(w, g1);
            a[h + p] = g1;
        }
    }
}

/* rows[0, n) ^= w * rows[n, 2n) (or the inverse pair step) for one butterfly of rows of `width` words
 * sharing the twiddle w. */
FFT_ATTR static void FFT_NAME(row_butterfly)(uint64_t *x, uint64_t *y, size_t width, uint64_t w, int inverse)
{
    size_t i = 0;
#ifdef FFT_VECTOR
    __m512i wv = _mm512_set1_epi64((long long)w);
    for (size_t end = width & ~(size_t)7; i < end; i += 8) {
        __m512i a = _mm512_loadu_si512((const void *)(x + i)), b = _mm512_loadu_si512((const void *)(y + i));
        if (!inverse) {
            __m512i v = _mm512_xor_si512(a, FFT_NAME(gf64_mul8)(wv, b));
            _mm512_storeu_si512((void *)(x + i), v);
            _mm512_storeu_si512((void *)(y + i), _mm512_xor_si512(v, b));
        } else {
            __m512i g1 = _mm512_xor_si512(a, b);
            _mm512_storeu_si512((void *)(x + i), _mm512_xor_si512(a, FFT_NAME(gf64_mul8)(wv, g1)));
            _mm512_storeu_si512((void *)(y + i), g1);
        }
    }
#endif
    for (; i < width; i++) {
        if (!inverse) {
            uint64_t v = x[i] ^ FFT_NAME(gf64_mul)(w, y[i]);
            x[i] = v;
            y[i] ^= v;
        } else {
            uint64_t g1 = x[i] ^ y[i];
            x[i] ^= FFT_NAME(gf64_mul)(w, g1);
            y[i] = g1;
        }
    }
}

/* Taylor expansion at y^tau + y (tau = 2^tau_log, a power of two, so (y^tau + y)^j for j a power of
 * two is y^(tau j) + y^j) of a[0, n) in place: afterwards f = sum_j h_j(y) (y^tau + y)^j, h_j =
 * a[j tau, (j+1) tau). One step, with q = n / (2 tau) and f = f0 + y^(n/2) f1, f1 = f1lo + y^(n/2-q) f1hi:
 * f = [f0 + y^q (f1lo + f1hi)] + (y^tau + y)^q [f1 + f1hi]. (Gao and Mateer 2010, sec. II.) */
FFT_ATTR static void FFT_NAME(taylor_tau)(uint64_t *a, size_t n, size_t tau)
{
    if (n <= tau)
        return;
    size_t q = n / (2 * tau);
    FFT_NAME(xor_into)(a + n / 2, a + n - q, q);
    FFT_NAME(xor_into)(a + q, a + n / 2, n / 2 - q);
    FFT_NAME(taylor_tau)(a, n / 2, tau);
    FFT_NAME(taylor_tau)(a + n / 2, n / 2, tau);
}

FFT_ATTR static void FFT_NAME(taylor_tau_inverse)(uint64_t *a, size_t n, size_t tau)
{
    if (n <= tau)
        return;
    size_t q = n / (2 * tau);
    FFT_NAME(taylor_tau_inverse)(a, n / 2, tau);
    FFT_NAME(taylor_tau_inverse)(a + n / 2, n / 2, tau);
    FFT_NAME(xor_into)(a + q, a + n / 2, n / 2 - q);
    FFT_NAME(xor_into)(a + n / 2, a + n - q, q);
}

/* s(c) = c^2 + c, and s_(2^i)(c) = c^(2^(2^i)) + c for the Cantor basis. */
FFT_ATTR static inline uint64_t FFT_NAME(s_map)(uint64_t c, unsigned squarings)
{
    uint64_t x = c;
    for (unsigned i = 0; i < squarings; i++)
        x = FFT_NAME(gf64_mul)(x, x);
    return x ^ c;
}

/* Taylor expansion at y^2 + y (as taylor_rows) of n rows of `width` words spaced `stride` words apart. */
FFT_ATTR static void FFT_NAME(taylor_strided)(uint64_t *a, size_t n, size_t width, size_t stride, int inverse)
{
    if (n <= 2)
        return;
    size_t q = n / 4;
    if (inverse) {
        FFT_NAME(taylor_strided)(a, n / 2, width, stride, 1);
        FFT_NAME(taylor_strided)(a + n / 2 * stride, n / 2, width, stride, 1);
    }
    for (size_t i = 0; i < q; i++) {
        uint64_t *r1 = a + (q + i) * stride, *r2 = a + (2 * q + i) * stride, *r3 = a + (3 * q + i) * stride;
        if (!inverse) {
            FFT_NAME(xor_into)(r2, r3, width);
            FFT_NAME(xor_into)(r1, r2, width);
        } else {
            FFT_NAME(xor_into)(r1, r2, width);
            FFT_NAME(xor_into)(r2, r3, width);
        }
    }
    if (!inverse) {
        FFT_NAME(taylor_strided)(a, n / 2, width, stride, 0);
        FFT_NAME(taylor_strided)(a + n / 2 * stride, n / 2, width, stride, 0);
    }
}

/* Rows: a holds 2^k rows of `width` words, `stride` words apart; the radix-2 transform is applied to
 * every column at once (the elements are rows, a row pair shares its twiddle), on points c + W_k.
 * The halves of the expansion are not moved: the even rows and the odd rows are the two
 * sub-problems (stride doubled), and the butterfly writes rows 2p and 2p + 1, so row t ends up with
 * the point c + sum_j bit_j(t) beta_j; the twiddle of pair p is c + nat[p], nat[p] = sum_j bit_j(p)
 * beta_(j+1). */
FFT_ATTR static void FFT_NAME(fft_rows)(uint64_t *a, unsigned k, size_t width, size_t stride, uint64_t c,
                                        const uint64_t *nat, int inverse)
{
    if (k == 0)
        return;
    size_t rows = (size_t)1 << k, h = rows / 2;
    uint64_t sc = FFT_NAME(s_map)(c, 1);
    if (!inverse) {
        FFT_NAME(taylor_strided)(a, rows, width, stride, 0);
        FFT_NAME(fft_rows)(a, k - 1, width, 2 * stride, sc, nat, 0);
        FFT_NAME(fft_rows)(a + stride, k - 1, width, 2 * stride, sc, nat, 0);
    }
    for (size_t p = 0; p < h; p++)
        FFT_NAME(row_butterfly)(a + 2 * p * stride, a + (2 * p + 1) * stride, width, c ^ nat[p], inverse);
    if (inverse) {
        FFT_NAME(fft_rows)(a, k - 1, width, 2 * stride, sc, nat, 1);
        FFT_NAME(fft_rows)(a + stride, k - 1, width, 2 * stride, sc, nat, 1);
        FFT_NAME(taylor_strided)(a, rows, width, stride, 1);
    }
}

/* Values of a (2^k coefficients) on c + W_k, in place; inverse: the coefficients from the values.
 * Up to BASE_LOG levels: radix 2, level by level in cache. Above: split k = k1 + k2 with k2 = 2^i:
 * Taylor expansion at y^(2^k2) + y gives 2^k1 rows of 2^k2 words; a k1-level transform of the rows
 * (fft_rows, on s_k2(c) + W_k1) leaves in row t the coefficients of a polynomial whose values on
 * c + L(t) + W_k2 are the wanted ones, L(t) = sum_j bit_j(t) beta_(j+k2) (the lift of the row's point). */
FFT_ATTR static void FFT_NAME(fft)(uint64_t *a, unsigned k, uint64_t c, const uint64_t *beta, const uint64_t *tw,
                                   uint64_t *tmp, int inverse)
{
    size_t n = (size_t)1 << k;
    if (k <= BASE_LOG) {
        uint64_t shift[BASE_LOG + 1];
        shift[k] = c;
        for (unsigned j = k; j >= 1; j--)
            shift[j - 1] = FFT_NAME(s_map)(shift[j], 1);
        if (!inverse) {
            for (unsigned j = k; j >= 1; j--)
                for (size_t s = 0; s < n; s += (size_t)1 << j) {
                    FFT_NAME(taylor_rows)(a + s, (size_t)1 << j, 1);
                    FFT_NAME(deinterleave)(a + s, (size_t)1 << j, tmp);
                }
            for (unsigned j = 1; j <= k; j++)
                for (size_t s = 0; s < n; s += (size_t)1 << j)
                    FFT_NAME(butterflies)(a + s, j, twiddles_of_level(tw, j), shift[j], 0);
        } else {
            for (unsigned j = k; j >= 1; j--)
                for (size_t s = 0; s < n; s += (size_t)1 << j)
                    FFT_NAME(butterflies)(a + s, j, twiddles_of_level(tw, j), shift[j], 1);
            for (unsigned j = 1; j <= k; j++)
                for (size_t s = 0; s < n; s += (size_t)1 << j) {
                    FFT_NAME(interleave)(a + s, (size_t)1 << j, tmp);
                    FFT_NAME(taylor_inverse_rows)(a + s, (size_t)1 << j, 1);
                }
        }
        return;
    }
    unsigned k2 = BASE_LOG; /* the largest power of two below k (a power of two: s_k2 is then sparse) */
    while (2 * k2 < k)
        k2 *= 2;
    unsigned k1 = k - k2;
    size_t tau = (size_t)1 << k2, rows = (size_t)1 << k1;
    uint64_t c1 = FFT_NAME(s_map)(c, k2), lift = 0;
    const uint64_t *nat = tw + NATURAL_TWIDDLES_AT;
    /* the row transform acts on each column alike: run it on column tiles that fit in cache */
    size_t cols = tau < ROW_TILE_WORDS ? tau : ROW_TILE_WORDS;
    if (!inverse) {
        FFT_NAME(taylor_tau)(a, n, tau);
        for (size_t col = 0; col < tau; col += cols)
            FFT_NAME(fft_rows)(a + col, k1, cols, tau, c1, nat, 0);
    }
    for (size_t t = 0; t < rows; t++) {
        FFT_NAME(fft)(a + t * tau, k2, c ^ lift, beta, tw, tmp, inverse);
        if (t + 1 < rows) /* t -> t + 1 flips bits 0..z of t, z = ctz(t + 1) */
            for (unsigned j = 0; j <= (unsigned)__builtin_ctzll(t + 1); j++)
                lift ^= beta[j + k2];
    }
    if (inverse) {
        for (size_t col = 0; col < tau; col += cols)
            FFT_NAME(fft_rows)(a + col, k1, cols, tau, c1, nat, 1);
        FFT_NAME(taylor_tau_inverse)(a, n, tau);
    }
}

/* acc (+)= a * b pointwise after transforming a and b (both overwritten): one block's product in the transform
 * domain (first: acc = a * b; acc may be a itself). Summing the blocks' products there and transforming back once
 * gives the sum of the products, mod the vanishing polynomial of W_k (the plain sum when each product has fewer than
 * 2^k coefficients). */
FFT_ATTR static void FFT_NAME(multiply_accumulate)(uint64_t *acc, uint64_t *a, uint64_t *b, unsigned k,
                                                   const uint64_t *beta, const uint64_t *tw, uint64_t *tmp, int first)
{
    size_t n = (size_t)1 << k, i = 0;
    FFT_NAME(fft)(a, k, 0, beta, tw, tmp, 0);
    FFT_NAME(fft)(b, k, 0, beta, tw, tmp, 0);
#ifdef FFT_VECTOR
    for (; i + 8 <= n; i += 8) {
        __m512i p = FFT_NAME(gf64_mul8)(_mm512_loadu_si512((const void *)(a + i)),
                                        _mm512_loadu_si512((const void *)(b + i)));
        if (!first)
            p = _mm512_xor_si512(p, _mm512_loadu_si512((const void *)(acc + i)));
        _mm512_storeu_si512((void *)(acc + i), p);
    }
#endif
    for (; i < n; i++)
        acc[i] = FFT_NAME(gf64_mul)(a[i], b[i]) ^ (first ? 0 : acc[i]);
}

/* The inverse transform of the accumulated products: their coefficients, in place. */
FFT_ATTR static void FFT_NAME(interpolate)(uint64_t *acc, unsigned k, const uint64_t *beta, const uint64_t *tw,
                                           uint64_t *tmp)
{
    FFT_NAME(fft)(acc, k, 0, beta, tw, tmp, 1);
}
