/* qkd_cascade.h - Cascade interactive reconciliation (Brassard & Salvail, EUROCRYPT '93), both roles.
 *
 * One qkd_cascade object serves one frame on one end. Alice's end answers parity questions about her
 * key; Bob's end asks them, binary-searches every odd block of every pass at once, flips the bits it
 * finds and follows the cascade effect into earlier passes. The pass layout (kind and block size of
 * each pass) and the 256-bit shuffle seed are chosen by Bob and announced; both ends derive identical
 * shuffles from them (qkd_prng.h).
 *
 * Wire payloads (little-endian; the Python layer adds the message header):
 *   parities:  u32 count, then ceil(count/8) bytes of bits, bit i in byte i/8 at position i%8.
 *   questions: u32 count, then count entries of 9 bytes: u8 pass, u32 start, u32 length, asking for
 *              the parity of positions [start, start+length) of that pass's shuffled order.
 * Bob batches one question per open search per round; with qkd_cascade_bob_set_lookahead he may ask for
 * several levels of a search's halving tree at once when few searches remain (fewer rounds, more
 * parities). Capacities: qkd_cascade_question_capacity_bytes bounds any questions payload either end
 * must handle.
 * Coordinates of a pass: CONTIGUOUS - the key order, blocks of block_bits; SHUFFLED - the order of a
 * seeded random permutation, blocks of block_bits; HALVES - a seeded random subset (each bit in it
 * with probability 1/2) followed by its complement, both in key order, as two blocks.
 */
#ifndef QKD_CASCADE_H
#define QKD_CASCADE_H

#include <stddef.h>
#include <stdint.h>

/* cffi:begin */
#define QKD_CASCADE_ALICE 0
#define QKD_CASCADE_BOB 1
#define QKD_CASCADE_PASS_CONTIGUOUS 0
#define QKD_CASCADE_PASS_SHUFFLED 1
#define QKD_CASCADE_PASS_HALVES 2
#define QKD_CASCADE_MAX_PASSES 64
#define QKD_CASCADE_MAX_BITS 1073741824
#define QKD_CASCADE_QUESTION_BYTES 9
#define QKD_CASCADE_MAX_LOOKAHEAD 3
#define QKD_CASCADE_MAX_FEW_SEARCHES 64

typedef struct qkd_cascade qkd_cascade;

typedef struct qkd_cascade_stats {
    uint64_t disclosed_bits;  /* parities of Alice's key revealed (answered questions + block parities) */
    uint64_t corrected_bits;  /* bits Bob flipped */
    uint64_t question_rounds; /* question messages answered (Alice) or sent (Bob) */
    uint32_t passes_started;  /* Bob: passes begun so far */
} qkd_cascade_stats;

int qkd_cascade_new(qkd_cascade **out, int role, uint64_t *key, size_t key_words, size_t n_bits,
                    const uint8_t *seed, size_t seed_len, const uint32_t *pass_kind,
                    const uint32_t *pass_block_bits, size_t npasses);
void qkd_cascade_free(qkd_cascade *c);
int64_t qkd_cascade_top_blocks(const qkd_cascade *c);
int64_t qkd_cascade_parities_bytes(size_t count);
int64_t qkd_cascade_question_capacity_bytes(const qkd_cascade *c);
int64_t qkd_cascade_alice_top_parities(qkd_cascade *c, uint8_t *out, size_t out_len);
int64_t qkd_cascade_alice_answer(qkd_cascade *c, const uint8_t *questions, size_t questions_len,
                                 uint8_t *out, size_t out_len);
int qkd_cascade_bob_set_top_parities(qkd_cascade *c, const uint8_t *payload, size_t payload_len);
int qkd_cascade_bob_set_lookahead(qkd_cascade *c, uint32_t few_searches, uint32_t levels);
int64_t qkd_cascade_bob_next_questions(qkd_cascade *c, uint8_t *out, size_t out_len);
int qkd_cascade_bob_apply_answers(qkd_cascade *c, const uint8_t *payload, size_t payload_len);
int qkd_cascade_get_stats(const qkd_cascade *c, qkd_cascade_stats *out);
/* cffi:end */

#endif
