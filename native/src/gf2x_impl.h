/* gf2x_impl.h - multiplication in GF(2)[x] of word arrays: schoolbook below a threshold, Karatsuba
 * above, and an unbalanced product by slicing the longer operand.
 *
 * Included once per carry-less multiply implementation with these macros defined:
 *   GF2X_NAME(x)  the name of function x in this instance (e.g. x##_pclmul)
 *   GF2X_ATTR     function attributes (a target attribute for the SIMD instance, or nothing)
 *   GF2X_CLMUL    void (uint64_t a, uint64_t b, uint64_t *lo, uint64_t *hi)
 *   GF2X_BASEMUL  optional: a faster schoolbook void (uint64_t *r, const uint64_t *a, const uint64_t *b,
 *                 size_t n) for n <= GF2X_BASE, used instead of the generic one below
 * Polynomials are little-endian word arrays (coefficient of x^i is bit i % 64 of word i / 64).
 * The product of an n-word and an n-word polynomial has 2n words. Nothing is allocated: the caller
 * passes scratch of gf2x_kara_scratch_words(n) words (see toeplitz.c).
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifndef GF2X_BASE
#error "define GF2X_BASE (schoolbook threshold in words) before including gf2x_impl.h"
#endif

#ifndef GF2X_BASEMUL
/* r[0, 2n) = a * b, schoolbook. */
GF2X_ATTR static void GF2X_NAME(gf2x_base)(uint64_t *r, const uint64_t *a, const uint64_t *b, size_t n)
{
    memset(r, 0, 2 * n * sizeof(uint64_t));
    for (size_t i = 0; i < n; i++) {
        uint64_t ai = a[i];
        uint64_t carry = 0;
        for (size_t j = 0; j < n; j++) {
            uint64_t lo, hi;
            GF2X_CLMUL(ai, b[j], &lo, &hi);
            r[i + j] ^= lo ^ carry;
            carry = hi;
        }
        r[i + n] ^= carry;
    }
}
#define GF2X_BASEMUL GF2X_NAME(gf2x_base)
#endif

/* r[0, 2n) = a * b, Karatsuba: (a0 + a1 X)(b0 + b1 X) = a0b0 + ((a0+a1)(b0+b1) + a0b0 + a1b1) X + a1b1 X^2
 * with X = x^(64h), h = ceil(n/2). Scratch: 4h words here plus what the half-size call needs. */
GF2X_ATTR static void GF2X_NAME(gf2x_kara)(uint64_t *r, const uint64_t *a, const uint64_t *b, size_t n,
                                           uint64_t *scratch)
{
    if (n <= GF2X_BASE) {
        GF2X_BASEMUL(r, a, b, n);
        return;
    }
    size_t h = (n + 1) / 2, l = n - h;
    uint64_t *sa = scratch, *sb = scratch + h, *mid = scratch + 2 * h, *rest = scratch + 4 * h;
    for (size_t i = 0; i < l; i++) {
        sa[i] = a[i] ^ a[h + i];
        sb[i] = b[i] ^ b[h + i];
    }
    if (l < h) {
        sa[h - 1] = a[h - 1];
        sb[h - 1] = b[h - 1];
    }
    GF2X_NAME(gf2x_kara)(r, a, b, h, rest);
    GF2X_NAME(gf2x_kara)(r + 2 * h, a + h, b + h, l, rest);
    GF2X_NAME(gf2x_kara)(mid, sa, sb, h, rest);
    for (size_t i = 0; i < 2 * h; i++)
        mid[i] ^= r[i];
    for (size_t i = 0; i < 2 * l; i++)
        mid[i] ^= r[2 * h + i];
    /* mid has degree < 2h words but r ends at 2n = 2h + 2l >= 3h words for n > GF2X_BASE >= 2. */
    for (size_t i = 0; i < 2 * h; i++)
        r[h + i] ^= mid[i];
}

/* r[0, na + nb) = a * b for na >= nb >= 1: slice a into nb-word pieces (the last one zero-padded).
 * r must hold ceil(na / nb) * nb + nb words; the words past na + nb come out zero.
 * Scratch: 3 * nb + gf2x_kara_scratch_words(nb) words. */
GF2X_ATTR static void GF2X_NAME(gf2x_mul)(uint64_t *r, const uint64_t *a, size_t na, const uint64_t *b, size_t nb,
                                          uint64_t *scratch)
{
    size_t pieces = (na + nb - 1) / nb;
    uint64_t *piece = scratch, *prod = scratch + nb, *rest = scratch + 3 * nb;
    memset(r, 0, (pieces * nb + nb) * sizeof(uint64_t));
    for (size_t p = 0; p < pieces; p++) {
        size_t off = p * nb, len = na - off < nb ? na - off : nb;
        const uint64_t *src = a + off;
        if (len < nb) {
            memcpy(piece, src, len * sizeof(uint64_t));
            memset(piece + len, 0, (nb - len) * sizeof(uint64_t));
            src = piece;
        }
        GF2X_NAME(gf2x_kara)(prod, src, b, nb, rest);
        for (size_t i = 0; i < 2 * nb; i++)
            r[off + i] ^= prod[i];
    }
}
