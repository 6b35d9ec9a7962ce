/* ldpc_spa512_impl.h - one iteration of the layered int8 sum-product decoder on AVX-512 (ldpc.c): a layer
 * edge by edge over all its chunks of 64 checks, the forward and backward box-plus chains of different chunks
 * overlapping. Included once per box-plus implementation, with these macros defined:
 *   SPA512_NAME            the function's name
 *   SPA512_ATTR            its attributes (the target: AVX-512BW, or AVX-512 VBMI)
 *   SPA512_TABLE           declarations of the correction table's registers, read from d->corr
 *   SPA512_BOXPLUS(a, b)   the box-plus of two vectors of message magnitudes, with those registers
 */

SPA512_ATTR static uint32_t
SPA512_NAME(qkd_ldpc_decoder *d, const uint8_t *syndrome, int scale, int offset)
{
    const qkd_ldpc_table *t = d->t;
    const uint32_t z = t->z, chunks = z / 64;
    const __m512i lmin = _mm512_set1_epi8(-QKD_LDPC_LLR_MAX), one = _mm512_set1_epi8(1);
    const __m512i zero = _mm512_setzero_si512(), cap = _mm512_set1_epi8((char)d->spa_cap);
    SPA512_TABLE
    __m512i *fwd = (__m512i *)d->fwd, *bwd = (__m512i *)d->bwd;
    __mmask64 *parity = d->masks, *hard = d->masks + chunks;
    uint32_t unsat = 0;
    for (uint32_t r = 0; r < t->mb; r++) {
        const uint32_t first = t->row_start[r], degree = (uint32_t)(t->row_start[r + 1] - first);
        const uint8_t *s = syndrome + (size_t)r * z;
        for (uint32_t c = 0; c < chunks; c++)
            parity[c] = hard[c] = _mm512_test_epi8_mask(_mm512_loadu_si512((const void *)(s + c * 64)), one);
        for (uint32_t e = 0; e < degree; e++) {
            const int8_t *col = d->posterior + (size_t)t->cols[first + e] * d->stride;
            const uint32_t shift = t->shifts[first + e];
            const __m512i *before = fwd + (size_t)(e ? e - 1 : 0) * chunks;
            __m512i *here = fwd + (size_t)e * chunks;
            for (uint32_t c = 0; c < chunks; c++) {
                const int8_t *l = col + (c * 64 + shift) % z;
                __m512i msg = _mm512_load_si512((const void *)(d->messages + (size_t)(first + e) * z + c * 64));
                __m512i q = _mm512_max_epi8(_mm512_subs_epi8(_mm512_loadu_si512((const void *)l), msg), lmin);
                _mm512_store_si512((void *)(d->q + (size_t)e * z + c * 64), q);
                __m512i a = _mm512_abs_epi8(q);
                __m512i f = e ? SPA512_BOXPLUS(_mm512_load_si512((const void *)(before + c)), a) : a;
                _mm512_store_si512((void *)(here + c), f);
                parity[c] ^= _mm512_movepi8_mask(q);
            }
        }
        for (uint32_t e = degree; e-- > 0;) {
            const __m512i *before = fwd + (size_t)(e ? e - 1 : 0) * chunks;
            for (uint32_t c = 0; c < chunks; c++) {
                void *qp = (void *)(d->q + (size_t)e * z + c * 64);
                __m512i q = _mm512_load_si512(qp);
                __m512i a = _mm512_abs_epi8(q);
                __m512i b = _mm512_load_si512((const void *)(bwd + c));
                __m512i f = _mm512_load_si512((const void *)(before + c));
                __m512i out = e == degree - 1 ? f : e == 0 ? b : SPA512_BOXPLUS(f, b);
                _mm512_store_si512((void *)(bwd + c), e == degree - 1 ? a : SPA512_BOXPLUS(b, a));
                out = _mm512_min_epu8(out, cap);
                __m512i rn = _mm512_mask_sub_epi8(out, parity[c] ^ _mm512_movepi8_mask(q), zero, out);
                _mm512_store_si512((void *)(d->messages + (size_t)(first + e) * z + c * 64), rn);
                __m512i w = _mm512_max_epi8(_mm512_adds_epi8(q, rn), lmin);
                _mm512_store_si512(qp, w);
                hard[c] ^= _mm512_movepi8_mask(w);
            }
        }
        for (uint32_t c = 0; c < chunks; c++)
            unsat += (uint32_t)__builtin_popcountll(hard[c]);
        write_back_layer(d, first, degree);
    }
    return unsat;
}
