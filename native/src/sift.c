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

int qkd_sift_sent_counts(const uint8_t *states, size_t n_slots, unsigned n_classes, uint64_t *counts,
                         size_t counts_len, size_t *bad_index)
{
    if (n_classes == 0 || n_classes > QKD_SIFT_MAX_CLASSES)
        return QKD_EINVAL;
    if (counts_len < 2 * (size_t)n_classes * QKD_SIFT_NCOUNTS)
        return QKD_ENOMEM;
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
            if (v >= 64 || (v >> QKD_SIFT_STATE_CLASS_SHIFT) >= n_classes) {
                for (size_t j = 0; j < n_slots; j++)
                    if (states[j] == v) {
                        set_bad(bad_index, j);
                        break;
                    }
                return QKD_EINVAL;
            }
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

/* Second pass: bits of matched detections, by group, into key at word offsets from group_bits. */
static int scatter(const uint8_t *codes, size_t count, unsigned n_groups, uint64_t *key, size_t key_words,
                   const uint64_t *group_bits)
{
    uint64_t *out[NGROUPS_MAX];
    uint64_t acc[NGROUPS_MAX];
    unsigned fill[NGROUPS_MAX];
    size_t offset = 0;
    for (unsigned g = 0; g < n_groups; g++) {
        out[g] = key + offset;
        acc[g] = 0;
        fill[g] = 0;
        offset += qkd_words_for_bits((size_t)group_bits[g]);
    }
    if (offset > key_words)
        return QKD_ENOMEM;
    for (size_t i = 0; i < count; i++) {
        unsigned c = codes[i];
        if (c & UNMATCHED)
            continue;
        unsigned g = c >> 1;
        acc[g] |= (uint64_t)(c & 1u) << fill[g];
        if (++fill[g] == 64) {
            *out[g]++ = acc[g];
            acc[g] = 0;
            fill[g] = 0;
        }
    }
    for (unsigned g = 0; g < n_groups; g++)
        if (fill[g])
            *out[g] = acc[g];
    memset(key + offset, 0, (key_words - offset) * sizeof(uint64_t));
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


int qkd_sift_alice(const uint8_t *states, uint64_t n_slots, const uint64_t *slots, const uint64_t *bob_basis,
                   size_t bob_basis_words, size_t count, unsigned n_classes, uint64_t *match, size_t match_words,
                   uint8_t *classes, size_t classes_len, uint64_t *counts, size_t counts_len, uint64_t *key,
                   size_t key_words, uint64_t *group_bits, size_t groups_len, uint8_t *scratch,
                   size_t scratch_len, size_t *bad_index)
{
    int rc = check_common(count, n_classes, match_words, counts_len, key_words, groups_len, scratch_len);
    if (rc != QKD_OK)
        return rc;
    if (bob_basis_words < qkd_words_for_bits(count) || classes_len < count)
        return QKD_ENOMEM;
    rc = qkd_sift_check_slots(slots, count, n_slots, bad_index);
    if (rc != QKD_OK)
        return rc;
    uint8_t *codes = scratch; /* group in bits 1..5 (by Bob's basis), bit value in bit 0, UNMATCHED flag */
    size_t words = qkd_words_for_bits(count);
    for (size_t w = 0; w < words; w++) {
        size_t base = w * 64, n = count - base < 64 ? count - base : 64;
        uint64_t bb = bob_basis[w], m = 0;
        for (size_t j = 0; j < n; j++) {
            unsigned st = states[slots[base + j]];
            unsigned cls = st >> QKD_SIFT_STATE_CLASS_SHIFT;
            if (st >= 64 || cls >= n_classes) {
                set_bad(bad_index, base + j);
                return QKD_EINVAL;
            }
            unsigned b = (unsigned)(bb >> j) & 1u;
            unsigned same = ((st >> 1) & 1u) == b;
            m |= (uint64_t)same << j;
            classes[base + j] = (uint8_t)cls;
            codes[base + j] = same ? (uint8_t)((cls << 2) | (b << 1) | (st & 1u)) : (uint8_t)(UNMATCHED | (cls << 2) | (b << 1));
        }
        match[w] = m;
    }
    for (size_t w = words; w < match_words; w++)
        match[w] = 0;
    unsigned n_groups = 2 * n_classes;
    uint64_t detected[NGROUPS_MAX] = {0}, matched[NGROUPS_MAX] = {0};
    for (size_t i = 0; i < count; i++) {
        unsigned c = codes[i];
        detected[(c & 0x7Fu) >> 1]++;
        matched[(c & 0x7Fu) >> 1] += !(c & UNMATCHED);
    }
    for (unsigned g = 0; g < n_groups; g++) {
        counts[g * QKD_SIFT_NCOUNTS + QKD_SIFT_DETECTED] = detected[g];
        counts[g * QKD_SIFT_NCOUNTS + QKD_SIFT_MATCHED] = matched[g];
        group_bits[g] = matched[g];
    }
    return scatter(codes, count, n_groups, key, key_words, group_bits);
}

int qkd_sift_bob(const uint8_t *basis, const uint8_t *outcome, size_t count, const uint64_t *match,
                 size_t match_words, const uint8_t *classes, unsigned n_classes, uint64_t *counts,
                 size_t counts_len, uint64_t *key, size_t key_words, uint64_t *group_bits, size_t groups_len,
                 uint8_t *scratch, size_t scratch_len, size_t *bad_index)
{
    int rc = check_common(count, n_classes, match_words, counts_len, key_words, groups_len, scratch_len);
    if (rc != QKD_OK)
        return rc;
    uint8_t *codes = scratch;
    uint64_t detected[NGROUPS_MAX] = {0}, matched[NGROUPS_MAX] = {0};
    for (size_t i = 0; i < count; i++) {
        unsigned b = basis[i], o = outcome[i], cls = classes[i];
        if (b > 1 || o > 1) {
            set_bad(bad_index, i);
            return QKD_EINVAL;
        }
        if (cls >= n_classes) {
            set_bad(bad_index, i);
            return QKD_EPROTO;
        }
        unsigned same = (unsigned)(match[i >> 6] >> (i & 63)) & 1u;
        unsigned g = cls * 2 + b;
        detected[g]++;
        matched[g] += same;
        codes[i] = same ? (uint8_t)((g << 1) | o) : (uint8_t)UNMATCHED;
    }
    unsigned n_groups = 2 * n_classes;
    for (unsigned g = 0; g < n_groups; g++) {
        counts[g * QKD_SIFT_NCOUNTS + QKD_SIFT_DETECTED] = detected[g];
        counts[g * QKD_SIFT_NCOUNTS + QKD_SIFT_MATCHED] = matched[g];
        group_bits[g] = matched[g];
    }
    return scatter(codes, count, n_groups, key, key_words, group_bits);
}
