/* sift.c - BB84 sifting kernels: slot checks, per-class counts, match and gather of sifted bits.
 *
 * Both ends work in two passes over the detections: the first classifies each detection into a
 * code byte (class << 2 | basis << 1 | bit, or UNMATCHED) and counts, the second scatters the bits
 * of matched detections into their group's run of the key buffer (whose offsets the counts give).
 */
#include "qkd_sift.h"

#include "qkd_bits.h"

#include <string.h>

#define UNMATCHED 0x80u
#define NGROUPS_MAX (2 * QKD_SIFT_MAX_CLASSES)

size_t qkd_sift_key_words(size_t count, unsigned n_classes)
{
    return qkd_words_for_bits(count) + 2 * (size_t)n_classes;
}

static void set_bad(size_t *bad_index, size_t i)
{
    if (bad_index)
        *bad_index = i;
}

int qkd_sift_check_slots(const uint64_t *slots, size_t count, uint64_t n_slots, size_t *bad_index)
{
    uint64_t prev = 0;
    for (size_t i = 0; i < count; i++) {
        uint64_t s = slots[i];
        if (s >= n_slots) {
            set_bad(bad_index, i);
            return QKD_ERANGE;
        }
        if (i > 0 && s <= prev) {
            set_bad(bad_index, i);
            return QKD_EPROTO;
        }
        prev = s;
    }
    return QKD_OK;
}

size_t qkd_sift_slot_code_bound(size_t count)
{
    return count > SIZE_MAX / QKD_SIFT_MAX_VARINT_BYTES ? 0 : count * QKD_SIFT_MAX_VARINT_BYTES;
}

/* Eight detections at once when each one's varint is one byte (the usual case: gaps below 128 slots): their
 * eight bytes, least significant first, in *bytes; 0 if any slot is >= n_slots, out of order or a gap is wider
 * (the caller then takes them one by one, with their checks). No branch per detection. */
static inline int eight_short_gaps(const uint64_t *slots, uint64_t next, uint64_t n_slots, uint64_t *bytes)
{
    uint64_t wide = slots[0] - next, packed = wide & 0xFF, outside = 0;
    for (unsigned j = 1; j < 8; j++) {
        /* wraps to a wide value when out of order; slots[j - 1] + 1 does not wrap: checked below n_slots */
        uint64_t v = slots[j] - slots[j - 1] - 1;
        wide |= v;
        packed |= (v & 0xFF) << (8 * j);
    }
    for (unsigned j = 0; j < 8; j++)
        outside |= (uint64_t)(slots[j] >= n_slots);
    *bytes = packed;
    return wide < 0x80 && !outside;
}

int qkd_sift_encode_slots(const uint64_t *slots, size_t count, uint64_t n_slots, uint8_t *out, size_t out_len,
                          size_t *used, size_t *bad_index)
{
    size_t pos = 0;
    uint64_t next = 0; /* smallest slot the next detection may have */
    for (size_t i = 0; i < count; i++) {
        uint64_t eight;
        if (count - i >= 8 && out_len - pos >= 8 && eight_short_gaps(slots + i, next, n_slots, &eight)) {
            for (unsigned j = 0; j < 8; j++)
                out[pos + j] = (uint8_t)(eight >> (8 * j));
            pos += 8;
            next = slots[i + 7] + 1;
            i += 7;
            continue;
        }
        uint64_t s = slots[i];
        if (s >= n_slots || (i > 0 && s < next)) {
            set_bad(bad_index, i);
            return s >= n_slots ? QKD_ERANGE : QKD_EPROTO;
        }
        uint64_t v = s - next;
        next = s + 1;
        if (out_len - pos >= QKD_SIFT_MAX_VARINT_BYTES && v < 0x80) { /* the common one-byte gap */
            out[pos++] = (uint8_t)v;
            continue;
        }
        while (v >= 0x80) {
            if (pos >= out_len)
                return QKD_ENOMEM;
            out[pos++] = (uint8_t)(v | 0x80);
            v >>= 7;
        }
        if (pos >= out_len)
            return QKD_ENOMEM;
        out[pos++] = (uint8_t)v;
    }
    *used = pos;
    return QKD_OK;
}

int qkd_sift_stream_equals(const uint64_t *slots, size_t count, uint64_t n_slots, const uint8_t *code,
                           size_t code_len)
{
    size_t pos = 0;
    uint64_t next = 0;
    for (size_t i = 0; i < count; i++) {
        uint64_t eight, got = 0;
        if (count - i >= 8 && code_len - pos >= 8 && eight_short_gaps(slots + i, next, n_slots, &eight)) {
            for (unsigned j = 0; j < 8; j++)
                got |= (uint64_t)code[pos + j] << (8 * j);
            if (got != eight)
                return 0;
            pos += 8;
            next = slots[i + 7] + 1;
            i += 7;
            continue;
        }
        uint64_t s = slots[i];
        if (s >= n_slots || (i > 0 && s < next))
            return 0;
        uint64_t v = s - next;
        next = s + 1;
        while (v >= 0x80) {
            if (pos >= code_len || code[pos] != (uint8_t)(v | 0x80))
                return 0;
            pos++;
            v >>= 7;
        }
        if (pos >= code_len || code[pos] != (uint8_t)v)
            return 0;
        pos++;
    }
    return pos == code_len;
}

/* Next varint of the slot stream into *v. QKD_EPROTO if truncated or longer than 64 bits. */
static inline int read_varint(const uint8_t *code, size_t len, size_t *pos, uint64_t *v)
{
    size_t p = *pos;
    if (p < len && code[p] < 0x80) { /* the common one-byte gap */
        *v = code[p];
        *pos = p + 1;
        return QKD_OK;
    }
    uint64_t value = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
        if (p >= len)
            return QKD_EPROTO;
        uint8_t byte = code[p++];
        if (shift == 63 && byte > 1)
            return QKD_EPROTO;
        value |= (uint64_t)(byte & 0x7F) << shift;
        if (!(byte & 0x80)) {
            *v = value;
            *pos = p;
            return QKD_OK;
        }
    }
    return QKD_EPROTO;
}

/* Slot of the next detection: *next is the smallest slot allowed; QKD_ERANGE past the frame. */
static inline int next_slot(const uint8_t *code, size_t len, size_t *pos, uint64_t *next, uint64_t n_slots,
                            uint64_t *slot)
{
    uint64_t gap;
    int rc = read_varint(code, len, pos, &gap);
    if (rc != QKD_OK)
        return rc;
    if (*next >= n_slots || gap > n_slots - 1 - *next)
        return QKD_ERANGE;
    *slot = *next + gap;
    *next = *slot + 1;
    return QKD_OK;
}

int qkd_sift_decode_slots(const uint8_t *code, size_t code_len, size_t count, uint64_t n_slots, uint64_t *slots,
                          size_t slots_len, size_t *bad_index)
{
    if (slots_len < count)
        return QKD_ENOMEM;
    size_t pos = 0;
    uint64_t next = 0;
    for (size_t i = 0; i < count; i++) {
        int rc = next_slot(code, code_len, &pos, &next, n_slots, &slots[i]);
        if (rc != QKD_OK) {
            set_bad(bad_index, i);
            return rc;
        }
    }
    if (pos != code_len) {
        set_bad(bad_index, count);
        return QKD_EPROTO;
    }
    return QKD_OK;
}

/* The sum of eight one-byte gaps (bytes below 0x80) packed in a word: byte pairs, then 16-bit lanes. */
static inline uint64_t eight_gap_sum(uint64_t bytes)
{
    uint64_t pairs = (bytes & 0x00FF00FF00FF00FFull) + ((bytes >> 8) & 0x00FF00FF00FF00FFull);
    return (pairs * 0x0001000100010001ull) >> 48;
}

int qkd_sift_check_slot_stream(const uint8_t *code, size_t code_len, size_t count, uint64_t n_slots,
                               size_t *bad_index)
{
    size_t pos = 0, i = 0;
    uint64_t next = 0, slot;
    while (i < count) {
        if (count - i >= 8 && code_len - pos >= 8) {
            uint64_t bytes;
            memcpy(&bytes, code + pos, 8);
            /* eight one-byte gaps: the eight slots run from next + gap0 to next + sum + 7; only the last can
             * pass the frame's end (next <= n_slots always) */
            uint64_t sum = eight_gap_sum(bytes);
            if (!(bytes & 0x8080808080808080ull) && sum + 7 < n_slots - next) {
                next += sum + 8;
                pos += 8;
                i += 8;
                continue;
            }
        }
        int rc = next_slot(code, code_len, &pos, &next, n_slots, &slot);
        if (rc != QKD_OK) {
            set_bad(bad_index, i);
            return rc;
        }
        i++;
    }
    if (pos != code_len) {
        set_bad(bad_index, count);
        return QKD_EPROTO;
    }
    return QKD_OK;
}

#if defined(__x86_64__)
#include <immintrin.h>
#define AVX2_GROUPS 8
/* Pulses per group g = state >> 1 for up to AVX2_GROUPS groups (four classes), 32 slots a step:
 * each group's byte counters subtract the compare mask (-1 per match) and are widened with SAD every
 * 255 steps. Returns the slots done (a multiple of 32); *largest is the largest state byte seen,
 * which the caller checks (a state of a larger class or with bits 6-7 set is malformed). */
__attribute__((target("avx2"))) static size_t sent_counts_avx2(const uint8_t *states, size_t n_slots,
                                                               uint64_t *group_total, unsigned *largest)
{
    const __m256i zero = _mm256_setzero_si256(), low7 = _mm256_set1_epi8(0x7F);
    __m256i top = zero, wide[AVX2_GROUPS];
    for (unsigned g = 0; g < AVX2_GROUPS; g++)
        wide[g] = zero;
    size_t i = 0;
    while (n_slots - i >= 32) {
        size_t steps = (n_slots - i) / 32 < 255 ? (n_slots - i) / 32 : 255;
        __m256i acc[AVX2_GROUPS];
        for (unsigned g = 0; g < AVX2_GROUPS; g++)
            acc[g] = zero;
        for (size_t t = 0; t < steps; t++, i += 32) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(states + i));
            top = _mm256_max_epu8(top, v);
            __m256i group = _mm256_and_si256(_mm256_srli_epi16(v, 1), low7);
            for (unsigned g = 0; g < AVX2_GROUPS; g++)
                acc[g] = _mm256_sub_epi8(acc[g], _mm256_cmpeq_epi8(group, _mm256_set1_epi8((char)g)));
        }
        for (unsigned g = 0; g < AVX2_GROUPS; g++)
            wide[g] = _mm256_add_epi64(wide[g], _mm256_sad_epu8(acc[g], zero));
    }
    for (unsigned g = 0; g < AVX2_GROUPS; g++) {
        uint64_t lanes[4];
        _mm256_storeu_si256((__m256i *)lanes, wide[g]);
        group_total[g] += lanes[0] + lanes[1] + lanes[2] + lanes[3];
    }
    uint8_t bytes[32];
    _mm256_storeu_si256((__m256i *)bytes, top);
    for (unsigned k = 0; k < 32; k++)
        *largest = bytes[k] > *largest ? bytes[k] : *largest;
    return i;
}
#endif

static int find_bad_state(const uint8_t *states, size_t n_slots, unsigned n_classes, size_t *bad_index)
{
    for (size_t j = 0; j < n_slots; j++)
        if (states[j] >= 4 * n_classes) {
            set_bad(bad_index, j);
            break;
        }
    return QKD_EINVAL;
}

/* Blocks of PACK_BLOCK slots: the loop without a branch per slot (the compiler vectorises it), the
 * block's largest value, basis and class checked after it. */
#define PACK_BLOCK 4096

int qkd_sift_pack_states(const uint8_t *value, const uint8_t *basis, const uint8_t *intensity_class, size_t n,
                         unsigned n_classes, uint8_t *out, size_t out_len, size_t *bad_index)
{
    if (n_classes == 0 || n_classes > QKD_SIFT_MAX_CLASSES)
        return QKD_EINVAL;
    if (out_len < n)
        return QKD_ENOMEM;
    for (size_t b0 = 0; b0 < n; b0 += PACK_BLOCK) {
        size_t b1 = n - b0 < PACK_BLOCK ? n : b0 + PACK_BLOCK;
        uint8_t bits = 0, top = 0;
        for (size_t i = b0; i < b1; i++) {
            uint8_t v = value[i], b = basis[i], c = intensity_class[i];
            bits |= (uint8_t)(v | b);
            top = c > top ? c : top;
            out[i] = (uint8_t)(v | (uint8_t)(b << 1) | (uint8_t)(c << QKD_SIFT_STATE_CLASS_SHIFT));
        }
        if (bits > 1 || top >= n_classes) {
            for (size_t i = b0; i < b1; i++)
                if (value[i] > 1 || basis[i] > 1 || intensity_class[i] >= n_classes) {
                    set_bad(bad_index, i);
                    return QKD_EINVAL;
                }
        }
    }
    return QKD_OK;
}

int qkd_sift_sent_counts(const uint8_t *states, size_t n_slots, unsigned n_classes, uint64_t *counts,
                         size_t counts_len, size_t *bad_index, uint32_t features)
{
    if (n_classes == 0 || n_classes > QKD_SIFT_MAX_CLASSES)
        return QKD_EINVAL;
    if (counts_len < 2 * (size_t)n_classes * QKD_SIFT_NCOUNTS)
        return QKD_ENOMEM;
#if defined(__x86_64__)
    if ((features & QKD_CPU_AVX2) && 2 * n_classes <= AVX2_GROUPS) {
        uint64_t group_total[AVX2_GROUPS] = {0};
        unsigned largest = 0;
        size_t done = sent_counts_avx2(states, n_slots, group_total, &largest);
        for (size_t j = done; j < n_slots; j++) {
            largest = states[j] > largest ? states[j] : largest;
            group_total[(states[j] >> 1) & 0x7F]++;
        }
        if (largest >= 4 * n_classes)
            return find_bad_state(states, n_slots, n_classes, bad_index);
        for (unsigned g = 0; g < 2 * n_classes; g++)
            counts[g * QKD_SIFT_NCOUNTS + QKD_SIFT_SENT] += group_total[g];
        return QKD_OK;
    }
#endif
    /* Four interleaved histograms of the state byte's low 6 bits hide the store-to-load dependency;
     * 32-bit bins are flushed every 2^31 slots. */
    uint64_t total[64] = {0};
    uint32_t hist[4][256];
    size_t i = 0;
    while (i < n_slots) {
        size_t chunk_end = n_slots - i > ((size_t)1 << 31) ? i + ((size_t)1 << 31) : n_slots;
        memset(hist, 0, sizeof hist);
        for (; i + 4 <= chunk_end; i += 4) {
            hist[0][states[i]]++;
            hist[1][states[i + 1]]++;
            hist[2][states[i + 2]]++;
            hist[3][states[i + 3]]++;
        }
        for (; i < chunk_end; i++)
            hist[0][states[i]]++;
        for (unsigned v = 0; v < 256; v++) {
            uint64_t n = (uint64_t)hist[0][v] + hist[1][v] + hist[2][v] + hist[3][v];
            if (n == 0)
                continue;
            if (v >= 4 * n_classes)
                return find_bad_state(states, n_slots, n_classes, bad_index);
            total[v] += n;
        }
    }
    for (unsigned v = 0; v < 64; v++) {
        unsigned g = (v >> QKD_SIFT_STATE_CLASS_SHIFT) * 2 + ((v & QKD_SIFT_STATE_BASIS) ? 1 : 0);
        if (total[v])
            counts[g * QKD_SIFT_NCOUNTS + QKD_SIFT_SENT] += total[v];
    }
    return QKD_OK;
}

/* Counts from the code bytes: DETECTED by (code & 0x7F) >> 1, MATCHED by code >> 1 for matched codes.
 * Four interleaved 256-bin histograms hide the increment dependency; bins flushed every 2^31 codes. */
static void tally(const uint8_t *codes, size_t count, unsigned n_groups, uint64_t *counts, uint64_t *group_bits)
{
    uint64_t total[256] = {0};
    uint32_t hist[4][256];
    size_t i = 0;
    while (i < count) {
        size_t end = count - i > ((size_t)1 << 31) ? i + ((size_t)1 << 31) : count;
        memset(hist, 0, sizeof hist);
        for (; i + 4 <= end; i += 4) {
            hist[0][codes[i]]++;
            hist[1][codes[i + 1]]++;
            hist[2][codes[i + 2]]++;
            hist[3][codes[i + 3]]++;
        }
        for (; i < end; i++)
            hist[0][codes[i]]++;
        for (unsigned v = 0; v < 256; v++)
            total[v] += (uint64_t)hist[0][v] + hist[1][v] + hist[2][v] + hist[3][v];
    }
    for (unsigned g = 0; g < n_groups; g++) {
        uint64_t matched = total[2 * g] + total[2 * g + 1];
        uint64_t unmatched = total[UNMATCHED | (2 * g)] + total[UNMATCHED | (2 * g + 1)];
        counts[g * QKD_SIFT_NCOUNTS + QKD_SIFT_DETECTED] = matched + unmatched;
        counts[g * QKD_SIFT_NCOUNTS + QKD_SIFT_MATCHED] = matched;
        group_bits[g] = matched;
    }
}

/* Per-group bit writers: append n (<= 64) bits to group g's run. */
struct writers {
    uint64_t *out[NGROUPS_MAX];
    uint64_t acc[NGROUPS_MAX];
    unsigned fill[NGROUPS_MAX];
};

static inline void append_bits(struct writers *w, unsigned g, uint64_t bits, unsigned n)
{
    if (n == 0)
        return;
    unsigned f = w->fill[g];
    w->acc[g] |= bits << f;
    if (f + n >= 64) {
        *w->out[g]++ = w->acc[g];
        w->acc[g] = f ? bits >> (64 - f) : 0;
        w->fill[g] = f + n - 64;
    } else {
        w->fill[g] = f + n;
    }
}

static size_t writers_init(struct writers *w, unsigned n_groups, uint64_t *key, const uint64_t *group_bits)
{
    size_t offset = 0;
    for (unsigned g = 0; g < n_groups; g++) {
        w->out[g] = key + offset;
        w->acc[g] = 0;
        w->fill[g] = 0;
        offset += qkd_words_for_bits((size_t)group_bits[g]);
    }
    return offset;
}

static void writers_flush(struct writers *w, unsigned n_groups)
{
    for (unsigned g = 0; g < n_groups; g++)
        if (w->fill[g])
            *w->out[g] = w->acc[g];
}

static void scatter_codes_scalar(struct writers *w, const uint8_t *codes, size_t from, size_t count)
{
    for (size_t i = from; i < count; i++) {
        unsigned c = codes[i];
        if (!(c & UNMATCHED))
            append_bits(w, c >> 1, c & 1u, 1);
    }
}

#if defined(__x86_64__)
#include <immintrin.h>
/* 64 codes at a time: a bit plane of the values, and per group a mask of its matched codes (codes
 * & 0xFE == 2g; unmatched codes have bit 7 set and never match); pext packs the group's values. */
__attribute__((target("avx2,bmi2,popcnt"))) static void scatter_codes_avx2(struct writers *w, const uint8_t *codes,
                                                                           size_t count, unsigned n_groups,
                                                                           const uint64_t *group_bits)
{
    const __m256i even = _mm256_set1_epi8((char)0xFE);
    unsigned active[NGROUPS_MAX], n_active = 0;
    for (unsigned g = 0; g < n_groups; g++)
        if (group_bits[g])
            active[n_active++] = g;
    size_t i = 0;
    for (; i + 64 <= count; i += 64) {
        __m256i c0 = _mm256_loadu_si256((const __m256i *)(codes + i));
        __m256i c1 = _mm256_loadu_si256((const __m256i *)(codes + i + 32));
        uint64_t values = (uint32_t)_mm256_movemask_epi8(_mm256_slli_epi16(c0, 7)) |
                          (uint64_t)(uint32_t)_mm256_movemask_epi8(_mm256_slli_epi16(c1, 7)) << 32;
        __m256i k0 = _mm256_and_si256(c0, even), k1 = _mm256_and_si256(c1, even);
        for (unsigned a = 0; a < n_active; a++) {
            unsigned g = active[a];
            __m256i want = _mm256_set1_epi8((char)(2 * g));
            uint64_t mask = (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(k0, want)) |
                            (uint64_t)(uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(k1, want)) << 32;
            append_bits(w, g, _pext_u64(values, mask), (unsigned)__builtin_popcountll(mask));
        }
    }
    scatter_codes_scalar(w, codes, i, count);
}
#endif

/* Second pass: bits of matched detections, by group, into key at word offsets from group_bits. */
static int scatter(const uint8_t *codes, size_t count, unsigned n_groups, uint64_t *key, size_t key_words,
                   const uint64_t *group_bits, uint32_t features)
{
    struct writers w;
    size_t used = writers_init(&w, n_groups, key, group_bits);
    if (used > key_words)
        return QKD_ENOMEM;
#if defined(__x86_64__)
    if ((features & QKD_CPU_AVX2) && (features & QKD_CPU_BMI2))
        scatter_codes_avx2(&w, codes, count, n_groups, group_bits);
    else
#endif
        scatter_codes_scalar(&w, codes, 0, count);
    writers_flush(&w, n_groups);
    memset(key + used, 0, (key_words - used) * sizeof(uint64_t));
    return QKD_OK;
}

static int check_common(size_t count, unsigned n_classes, size_t match_words, size_t counts_len, size_t key_words,
                        size_t groups_len, size_t scratch_len)
{
    if (n_classes == 0 || n_classes > QKD_SIFT_MAX_CLASSES)
        return QKD_EINVAL;
    if (match_words < qkd_words_for_bits(count) || counts_len < 2 * (size_t)n_classes * QKD_SIFT_NCOUNTS ||
        key_words < qkd_sift_key_words(count, n_classes) || groups_len < 2 * (size_t)n_classes ||
        scratch_len < count)
        return QKD_ENOMEM;
    return QKD_OK;
}

/* Alice's classification of 64 detections with gathered state bytes st[] and Bob's bases (bits of bb):
 * returns the match bits, writes classes and codes, raises *largest to the largest state byte.
 * A matched code is the state byte itself; an unmatched one flips the basis to Bob's, clears the
 * value and sets UNMATCHED: st ^ (UNMATCHED | 2 | (st & 1)). Branch-free: matches are coin flips. */
#if defined(__SSE2__)
#include <emmintrin.h>
static inline uint64_t classify64(const uint8_t *st, uint64_t bb, uint8_t *classes, uint8_t *codes,
                                  unsigned *largest)
{
    const __m128i one = _mm_set1_epi8(1), low6 = _mm_set1_epi8(0x3F), flip = _mm_set1_epi8((char)(UNMATCHED | 2u));
    const __m128i bitsel = _mm_set_epi8((char)0x80, 0x40, 0x20, 0x10, 8, 4, 2, 1, (char)0x80, 0x40, 0x20, 0x10, 8,
                                        4, 2, 1);
    __m128i top = _mm_setzero_si128();
    uint64_t m = 0;
    for (unsigned q = 0; q < 4; q++) {
        __m128i s = _mm_loadu_si128((const __m128i *)(st + 16 * q));
        /* Bob's 16 basis bits to 16 bytes of 0/1: replicate each byte of bits 8 times, select bit k. */
        uint16_t bits16 = (uint16_t)(bb >> (16 * q));
        __m128i rep = _mm_unpacklo_epi64(_mm_set1_epi8((char)(bits16 & 0xFF)), _mm_set1_epi8((char)(bits16 >> 8)));
        __m128i b = _mm_min_epu8(_mm_and_si128(rep, bitsel), one);
        __m128i differ = _mm_and_si128(_mm_xor_si128(_mm_srli_epi16(s, 1), b), one);
        __m128i dm = _mm_cmpeq_epi8(differ, one);
        __m128i code = _mm_xor_si128(s, _mm_and_si128(dm, _mm_or_si128(flip, _mm_and_si128(s, one))));
        _mm_storeu_si128((__m128i *)(codes + 16 * q), code);
        _mm_storeu_si128((__m128i *)(classes + 16 * q), _mm_and_si128(_mm_srli_epi16(s, 2), low6));
        m |= (uint64_t)(uint16_t)_mm_movemask_epi8(_mm_cmpeq_epi8(differ, _mm_setzero_si128())) << (16 * q);
        top = _mm_max_epu8(top, s);
    }
    uint8_t lanes[16];
    _mm_storeu_si128((__m128i *)lanes, top);
    for (unsigned i = 0; i < 16; i++)
        *largest = lanes[i] > *largest ? lanes[i] : *largest;
    return m;
}
#else
static inline uint64_t classify64(const uint8_t *st, uint64_t bb, uint8_t *classes, uint8_t *codes,
                                  unsigned *largest)
{
    uint64_t m = 0;
    for (unsigned j = 0; j < 64; j++) {
        unsigned s = st[j], differ = ((s >> 1) ^ (unsigned)(bb >> j)) & 1u;
        *largest = s > *largest ? s : *largest;
        m |= (uint64_t)(differ ^ 1u) << j;
        classes[j] = (uint8_t)(s >> QKD_SIFT_STATE_CLASS_SHIFT);
        codes[j] = (uint8_t)(s ^ ((0u - differ) & (UNMATCHED | 2u | (s & 1u))));
    }
    return m;
}
#endif

int qkd_sift_alice(const uint8_t *states, uint64_t n_slots, const uint8_t *slot_code, size_t slot_code_len,
                   const uint64_t *bob_basis, size_t bob_basis_words, size_t count, unsigned n_classes, uint64_t *match, size_t match_words,
                   uint8_t *classes, size_t classes_len, uint64_t *counts, size_t counts_len, uint64_t *key,
                   size_t key_words, uint64_t *group_bits, size_t groups_len, uint8_t *scratch,
                   size_t scratch_len, size_t *bad_index, uint32_t features)
{
    int rc = check_common(count, n_classes, match_words, counts_len, key_words, groups_len, scratch_len);
    if (rc != QKD_OK)
        return rc;
    if (bob_basis_words < qkd_words_for_bits(count) || classes_len < count)
        return QKD_ENOMEM;
    /* A matched detection's code is the state byte itself (class << 2 | basis << 1 | value); an
     * unmatched one is UNMATCHED | class << 2 | bob basis << 1. Malformed states are found after the
     * loop from the largest state seen (valid ones are < 4 * n_classes). */
    uint8_t *codes = scratch;
    unsigned largest = 0;
    size_t words = qkd_words_for_bits(count), pos = 0;
    uint64_t next = 0;
    for (size_t w = 0; w < words; w++) {
        size_t base = w * 64, n = count - base < 64 ? count - base : 64;
        uint8_t gathered[64];
        for (size_t j = 0; j < n; j++) {
            uint64_t slot;
            rc = next_slot(slot_code, slot_code_len, &pos, &next, n_slots, &slot);
            if (rc != QKD_OK) {
                set_bad(bad_index, base + j);
                return rc;
            }
            gathered[j] = states[slot];
        }
        uint64_t bb = bob_basis[w];
        if (n == 64) {
            match[w] = classify64(gathered, bb, classes + base, codes + base, &largest);
            continue;
        }
        uint64_t m = 0;
        for (size_t j = 0; j < n; j++) {
            unsigned st = gathered[j];
            unsigned differ = ((st >> 1) ^ (unsigned)(bb >> j)) & 1u;
            largest = st > largest ? st : largest;
            m |= (uint64_t)(differ ^ 1u) << j;
            classes[base + j] = (uint8_t)(st >> QKD_SIFT_STATE_CLASS_SHIFT);
            codes[base + j] = (uint8_t)(st ^ ((0u - differ) & (UNMATCHED | 2u | (st & 1u))));
        }
        match[w] = m;
    }
    if (pos != slot_code_len) {
        set_bad(bad_index, count);
        return QKD_EPROTO;
    }
    if (largest >= 4 * n_classes) {
        pos = 0;
        next = 0;
        for (size_t i = 0; i < count; i++) {
            uint64_t slot = 0; /* the stream decoded once already: no error here */
            next_slot(slot_code, slot_code_len, &pos, &next, n_slots, &slot);
            if (states[slot] >= 4 * n_classes) {
                set_bad(bad_index, i);
                break;
            }
        }
        return QKD_EINVAL;
    }
    for (size_t w = words; w < match_words; w++)
        match[w] = 0;
    unsigned n_groups = 2 * n_classes;
    tally(codes, count, n_groups, counts, group_bits);
    return scatter(codes, count, n_groups, key, key_words, group_bits, features);
}

#if defined(__SSE2__)
/* Bob's classification of 64 detections: code = class << 2 | basis << 1 | (matched ? outcome : UNMATCHED).
 * *flags collects basis | outcome (valid records keep it <= 1), *largest_class the largest class. */
static inline void classify64_bob(const uint8_t *basis, const uint8_t *outcome, const uint8_t *classes,
                                  uint64_t match, uint8_t *codes, unsigned *flags, unsigned *largest_class)
{
    const __m128i one = _mm_set1_epi8(1), unmatched = _mm_set1_epi8((char)UNMATCHED);
    const __m128i bitsel = _mm_set_epi8((char)0x80, 0x40, 0x20, 0x10, 8, 4, 2, 1, (char)0x80, 0x40, 0x20, 0x10, 8,
                                        4, 2, 1);
    __m128i any = _mm_setzero_si128(), top = _mm_setzero_si128();
    for (unsigned q = 0; q < 4; q++) {
        __m128i b = _mm_loadu_si128((const __m128i *)(basis + 16 * q));
        __m128i o = _mm_loadu_si128((const __m128i *)(outcome + 16 * q));
        __m128i c = _mm_loadu_si128((const __m128i *)(classes + 16 * q));
        uint16_t bits16 = (uint16_t)(match >> (16 * q));
        __m128i rep = _mm_unpacklo_epi64(_mm_set1_epi8((char)(bits16 & 0xFF)), _mm_set1_epi8((char)(bits16 >> 8)));
        __m128i same = _mm_cmpeq_epi8(_mm_min_epu8(_mm_and_si128(rep, bitsel), one), one);
        __m128i low = _mm_or_si128(_mm_and_si128(same, o), _mm_andnot_si128(same, unmatched));
        /* class << 2 and basis << 1 within bytes: add doubles without crossing bytes for small values */
        __m128i c4 = _mm_add_epi8(_mm_add_epi8(c, c), _mm_add_epi8(c, c));
        __m128i code = _mm_or_si128(_mm_or_si128(c4, _mm_add_epi8(b, b)), low);
        _mm_storeu_si128((__m128i *)(codes + 16 * q), code);
        any = _mm_or_si128(any, _mm_or_si128(b, o));
        top = _mm_max_epu8(top, c);
    }
    uint8_t lanes_any[16], lanes_top[16];
    _mm_storeu_si128((__m128i *)lanes_any, any);
    _mm_storeu_si128((__m128i *)lanes_top, top);
    for (unsigned k = 0; k < 16; k++) {
        *flags |= lanes_any[k];
        *largest_class = lanes_top[k] > *largest_class ? lanes_top[k] : *largest_class;
    }
}
#endif

int qkd_sift_bob(const uint8_t *basis, const uint8_t *outcome, size_t count, const uint64_t *match,
                 size_t match_words, const uint8_t *classes, unsigned n_classes, uint64_t *counts,
                 size_t counts_len, uint64_t *key, size_t key_words, uint64_t *group_bits, size_t groups_len,
                 uint8_t *scratch, size_t scratch_len, size_t *bad_index, uint32_t features)
{
    int rc = check_common(count, n_classes, match_words, counts_len, key_words, groups_len, scratch_len);
    if (rc != QKD_OK)
        return rc;
    uint8_t *codes = scratch;
    unsigned flags = 0, largest_class = 0;
    size_t i = 0;
#if defined(__SSE2__)
    for (; i + 64 <= count; i += 64)
        classify64_bob(basis + i, outcome + i, classes + i, match[i >> 6], codes + i, &flags, &largest_class);
#endif
    for (; i < count; i++) {
        unsigned b = basis[i], o = outcome[i], cls = classes[i];
        unsigned same = (unsigned)(match[i >> 6] >> (i & 63)) & 1u;
        flags |= b | o;
        largest_class = cls > largest_class ? cls : largest_class;
        unsigned code = (cls << 2) | (b << 1);
        codes[i] = (uint8_t)(same ? code | o : UNMATCHED | code);
    }
    if (flags > 1 || largest_class >= n_classes) {
        for (size_t i = 0; i < count; i++) {
            if (basis[i] > 1 || outcome[i] > 1) {
                set_bad(bad_index, i);
                return QKD_EINVAL;
            }
            if (classes[i] >= n_classes) {
                set_bad(bad_index, i);
                return QKD_EPROTO;
            }
        }
    }
    unsigned n_groups = 2 * n_classes;
    tally(codes, count, n_groups, counts, group_bits);
    return scatter(codes, count, n_groups, key, key_words, group_bits, features);
}
