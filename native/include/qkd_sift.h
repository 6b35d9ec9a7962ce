/* qkd_sift.h - BB84 sifting: match Bob's detections against Alice's prepared states, count what the
 * decoy-state estimate needs, and gather the sifted bits per (intensity class, basis).
 *
 * Records (all per frame, slots numbered from 0):
 *   Alice: one state byte per slot: bit 0 the bit value, bit 1 the basis (0 = Z, 1 = X), bits 2..5
 *          the intensity class (0 = signal, then decoys), bits 6..7 zero.
 *   Bob:   detections as three columns: slots (uint64, strictly increasing, < n_slots), basis (0/1)
 *          and outcome (0/1), one uint8 each. Alice receives the slots as a varint stream (below)
 *          and Bob's bases bit-packed.
 * Groups: g = class * 2 + basis. Sifted bits of group g (in slot order) start at word key_offset[g]
 * of the key buffer, key_offset[g] = sum over h < g of ceil(group_bits[h] / 64); the key buffer needs
 * at most qkd_sift_key_words(count, n_classes) words.
 * Counts: counts[g * QKD_SIFT_NCOUNTS + field], with the basis in g being Bob's for DETECTED (he knows
 * it) and the common basis for MATCHED; SENT (Alice's basis) comes from qkd_sift_sent_counts.
 * features: qkd_cpu_features() or a subset (0 = portable code; AVX2 + BMI2 speed up the gather).
 * On a refused input, *bad_index (if not NULL) names the first offending record.
 */
#ifndef QKD_SIFT_H
#define QKD_SIFT_H

#include <stddef.h>
#include <stdint.h>

/* cffi:begin */
#define QKD_SIFT_MAX_CLASSES 16
#define QKD_SIFT_STATE_VALUE 1
#define QKD_SIFT_STATE_BASIS 2
#define QKD_SIFT_STATE_CLASS_SHIFT 2
#define QKD_SIFT_SENT 0
#define QKD_SIFT_DETECTED 1
#define QKD_SIFT_MATCHED 2
#define QKD_SIFT_NCOUNTS 3

size_t qkd_sift_key_words(size_t count, unsigned n_classes);

/* QKD_ERANGE: a slot >= n_slots; QKD_EPROTO: slots not strictly increasing (unsorted or duplicate). */
int qkd_sift_check_slots(const uint64_t *slots, size_t count, uint64_t n_slots, size_t *bad_index);

/* Alice's state bytes from her per-slot columns, in one pass: out[i] = value[i] | basis[i] << 1 |
 * class[i] << CLASS_SHIFT. QKD_EINVAL (*bad_index: the first such slot): a value or basis above 1 or a
 * class >= n_classes; out is then partly written. */
int qkd_sift_pack_states(const uint8_t *value, const uint8_t *basis, const uint8_t *intensity_class, size_t n,
                         unsigned n_classes, uint8_t *out, size_t out_len, size_t *bad_index);

/* counts[g * NCOUNTS + SENT] += pulses of class/basis g. QKD_EINVAL: a state byte is malformed. */
int qkd_sift_sent_counts(const uint8_t *states, size_t n_slots, unsigned n_classes, uint64_t *counts,
                         size_t counts_len, size_t *bad_index, uint32_t features);

/* Slot stream (Bob's announcement): LEB128 varints, 7 bits per byte, least significant group first,
 * high bit set on all but the last byte of each: the first slot, then for each further detection
 * its gap to the previous one minus one (slot - previous - 1). Unsorted or duplicate slots cannot be
 * written; a stream that is truncated, has an overlong (> 64-bit) varint or trailing bytes is
 * QKD_EPROTO, a slot >= n_slots QKD_ERANGE. qkd_sift_slot_code_bound: bytes the encoder may need
 * (0 on overflow). */
#define QKD_SIFT_MAX_VARINT_BYTES 10
size_t qkd_sift_slot_code_bound(size_t count);
int qkd_sift_encode_slots(const uint64_t *slots, size_t count, uint64_t n_slots, uint8_t *out, size_t out_len,
                          size_t *used, size_t *bad_index);
int qkd_sift_decode_slots(const uint8_t *code, size_t code_len, size_t count, uint64_t n_slots, uint64_t *slots,
                          size_t slots_len, size_t *bad_index);
/* qkd_sift_decode_slots' checks without writing the slots: QKD_OK when code holds exactly count slots below
 * n_slots, the decoder's error and *bad_index otherwise. Eight one-byte gaps are checked at a time (the usual
 * stream), the rest one by one. For a receiver that passes the stream on without needing the slots. */
int qkd_sift_check_slot_stream(const uint8_t *code, size_t code_len, size_t count, uint64_t n_slots,
                               size_t *bad_index);
/* 1 if code is exactly the stream qkd_sift_encode_slots writes for these slots, 0 if it differs or they cannot
 * be encoded (a slot >= n_slots, not strictly increasing): the comparison without writing the stream. */
int qkd_sift_stream_equals(const uint64_t *slots, size_t count, uint64_t n_slots, const uint8_t *code,
                           size_t code_len);

/* Alice: from her states and Bob's (slot stream, packed bases) fill the match bits, the class of every
 * detection, the DETECTED and MATCHED counts, and her sifted bits. scratch: count bytes. */
int qkd_sift_alice(const uint8_t *states, uint64_t n_slots, const uint8_t *slot_code, size_t slot_code_len,
                   const uint64_t *bob_basis, size_t bob_basis_words, size_t count, unsigned n_classes, uint64_t *match, size_t match_words,
                   uint8_t *classes, size_t classes_len, uint64_t *counts, size_t counts_len, uint64_t *key,
                   size_t key_words, uint64_t *group_bits, size_t groups_len, uint8_t *scratch,
                   size_t scratch_len, size_t *bad_index, uint32_t features);

/* Bob: from his bases and outcomes and Alice's answer (match bits, classes) fill the DETECTED and
 * MATCHED counts and his sifted bits. QKD_EPROTO: a class >= n_classes in Alice's answer;
 * QKD_EINVAL: a basis or outcome that is not 0/1. scratch: count bytes. */
int qkd_sift_bob(const uint8_t *basis, const uint8_t *outcome, size_t count, const uint64_t *match,
                 size_t match_words, const uint8_t *classes, unsigned n_classes, uint64_t *counts,
                 size_t counts_len, uint64_t *key, size_t key_words, uint64_t *group_bits, size_t groups_len,
                 uint8_t *scratch, size_t scratch_len, size_t *bad_index, uint32_t features);
/* cffi:end */

#endif
