/* test_sift.c - sifting kernels against a direct per-detection reference: both ends agree on match,
 * counts and group lengths, sifted bits equal the reference, and bad records are refused by index. */
#include "check.h"
#include "qkd_bits.h"
#include "qkd_sift.h"

#include <stdlib.h>
#include <string.h>

static uint64_t rng_state = 777;

static uint64_t next_u64(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

enum { N_SLOTS = 20000, N_CLASSES = 3, N_GROUPS = 2 * N_CLASSES };

static int run(uint32_t features)
{
    static uint8_t states[N_SLOTS], basis[N_SLOTS], outcome[N_SLOTS], classes[N_SLOTS], scratch[N_SLOTS];
    static uint8_t code[N_SLOTS * QKD_SIFT_MAX_VARINT_BYTES];
    static uint64_t decoded[N_SLOTS];
    static uint64_t slots[N_SLOTS], bob_basis[N_SLOTS / 64 + 1], match[N_SLOTS / 64 + 1];
    static uint64_t key_a[N_SLOTS / 64 + 1 + N_GROUPS], key_b[N_SLOTS / 64 + 1 + N_GROUPS];
    uint64_t counts_a[N_GROUPS * QKD_SIFT_NCOUNTS] = {0}, counts_b[N_GROUPS * QKD_SIFT_NCOUNTS] = {0};
    uint64_t bits_a[N_GROUPS], bits_b[N_GROUPS];
    for (size_t s = 0; s < N_SLOTS; s++) {
        uint64_t r = next_u64();
        states[s] = (uint8_t)((r & 3) | ((r >> 8) % N_CLASSES) << QKD_SIFT_STATE_CLASS_SHIFT);
    }
    size_t count = 0;
    for (size_t s = 0; s < N_SLOTS; s++) {
        uint64_t r = next_u64();
        if (r % 7 != 0)
            continue;
        slots[count] = s;
        basis[count] = (uint8_t)((r >> 8) & 1);
        /* outcome equals Alice's bit in the matched basis except one in 16 */
        outcome[count] = (uint8_t)((states[s] & 1) ^ (((r >> 12) & 15) == 0));
        count++;
    }
    memset(bob_basis, 0, sizeof bob_basis);
    for (size_t i = 0; i < count; i++)
        bob_basis[i / 64] |= (uint64_t)basis[i] << (i % 64);
    size_t kw = qkd_sift_key_words(count, N_CLASSES), bad = 0, code_len = 0;
    CHECK_EQ(qkd_sift_encode_slots(slots, count, N_SLOTS, code, sizeof code, &code_len, &bad), QKD_OK);
    CHECK(code_len >= count && code_len < 2 * count);
    CHECK_EQ(qkd_sift_decode_slots(code, code_len, count, N_SLOTS, decoded, N_SLOTS, &bad), QKD_OK);
    CHECK(memcmp(decoded, slots, count * 8) == 0);
    CHECK_EQ(qkd_sift_check_slot_stream(code, code_len, count, N_SLOTS, &bad), QKD_OK);
    /* the check agrees with the decoder on every cut, shortened frame and wrong count of this stream */
    for (size_t cut = 0; cut <= 40 && cut <= code_len; cut += 3) {
        size_t bad_check = 7, bad_decode = 9;
        CHECK_EQ(qkd_sift_check_slot_stream(code, code_len - cut, count, N_SLOTS, &bad_check),
                 qkd_sift_decode_slots(code, code_len - cut, count, N_SLOTS, decoded, N_SLOTS, &bad_decode));
        CHECK_EQ(bad_check == 7 ? 9 : bad_check, bad_decode);
    }
    for (uint64_t n = slots[count - 1] - 20; n <= slots[count - 1] + 1; n++) {
        size_t bad_check = 7, bad_decode = 9;
        CHECK_EQ(qkd_sift_check_slot_stream(code, code_len, count, n, &bad_check),
                 qkd_sift_decode_slots(code, code_len, count, n, decoded, N_SLOTS, &bad_decode));
        CHECK_EQ(bad_check == 7 ? 9 : bad_check, bad_decode);
    }
    for (size_t c = count - 9; c <= count + 1; c++) {
        size_t bad_check = 7, bad_decode = 9;
        CHECK_EQ(qkd_sift_check_slot_stream(code, code_len, c, N_SLOTS, &bad_check),
                 qkd_sift_decode_slots(code, code_len, c, N_SLOTS, decoded, N_SLOTS, &bad_decode));
        CHECK_EQ(bad_check == 7 ? 9 : bad_check, bad_decode);
    }
    CHECK(kw <= sizeof key_a / 8);
    CHECK_EQ(qkd_sift_sent_counts(states, N_SLOTS, N_CLASSES, counts_a, N_GROUPS * QKD_SIFT_NCOUNTS, &bad, features), QKD_OK);
    CHECK_EQ(qkd_sift_alice(states, N_SLOTS, code, code_len, bob_basis, sizeof bob_basis / 8, count, N_CLASSES, match,
                            sizeof match / 8, classes, N_SLOTS, counts_a, N_GROUPS * QKD_SIFT_NCOUNTS, key_a, kw,
                            bits_a, N_GROUPS, scratch, N_SLOTS, &bad, features), QKD_OK);
    CHECK_EQ(qkd_sift_bob(basis, outcome, count, match, sizeof match / 8, classes, N_CLASSES, counts_b,
                          N_GROUPS * QKD_SIFT_NCOUNTS, key_b, kw, bits_b, N_GROUPS, scratch, N_SLOTS, &bad, features), QKD_OK);

    /* reference */
    uint64_t sent[N_GROUPS] = {0}, det[N_GROUPS] = {0}, mat[N_GROUPS] = {0}, errors = 0, sifted = 0;
    for (size_t s = 0; s < N_SLOTS; s++)
        sent[(states[s] >> 2) * 2 + ((states[s] >> 1) & 1)]++;
    size_t pos[N_GROUPS] = {0}, off[N_GROUPS];
    size_t o = 0;
    for (int g = 0; g < N_GROUPS; g++) {
        off[g] = o;
        o += qkd_words_for_bits(bits_a[g]);
    }
    int bits_ok = 1;
    for (size_t i = 0; i < count; i++) {
        uint8_t st = states[slots[i]];
        int g = (st >> 2) * 2 + basis[i];
        CHECK_EQ(classes[i], st >> 2);
        det[g]++;
        int same = ((st >> 1) & 1) == basis[i];
        CHECK_EQ((int)((match[i / 64] >> (i % 64)) & 1), same);
        if (!same)
            continue;
        mat[g]++;
        size_t at = off[g] * 64 + pos[g]++;
        bits_ok &= qkd_bit_get(key_a, at) == (st & 1) && qkd_bit_get(key_b, at) == outcome[i];
        errors += (st & 1) != outcome[i];
        sifted++;
    }
    CHECK(bits_ok);
    CHECK(errors > 0 && errors < sifted / 8);
    for (int g = 0; g < N_GROUPS; g++) {
        CHECK_EQ(counts_a[g * QKD_SIFT_NCOUNTS + QKD_SIFT_SENT], sent[g]);
        CHECK_EQ(counts_a[g * QKD_SIFT_NCOUNTS + QKD_SIFT_DETECTED], det[g]);
        CHECK_EQ(counts_b[g * QKD_SIFT_NCOUNTS + QKD_SIFT_DETECTED], det[g]);
        CHECK_EQ(counts_a[g * QKD_SIFT_NCOUNTS + QKD_SIFT_MATCHED], mat[g]);
        CHECK_EQ(counts_b[g * QKD_SIFT_NCOUNTS + QKD_SIFT_MATCHED], mat[g]);
        CHECK_EQ(bits_a[g], mat[g]);
        CHECK_EQ(bits_b[g], mat[g]);
    }

    /* varint stream: big gaps, and malformed streams */
    uint64_t wide[3] = {0, (uint64_t)1 << 40, UINT64_MAX - 1};
    uint64_t back[3];
    uint8_t wcode[30];
    size_t wlen = 0;
    CHECK_EQ(qkd_sift_encode_slots(wide, 3, UINT64_MAX, wcode, sizeof wcode, &wlen, &bad), QKD_OK);
    CHECK_EQ(qkd_sift_decode_slots(wcode, wlen, 3, UINT64_MAX, back, 3, &bad), QKD_OK);
    CHECK(memcmp(back, wide, sizeof wide) == 0);
    CHECK_EQ(qkd_sift_encode_slots(wide, 3, UINT64_MAX, wcode, 8, &wlen, &bad), QKD_ENOMEM);
    CHECK_EQ(qkd_sift_decode_slots(wcode, 7, 3, UINT64_MAX, back, 3, &bad), QKD_EPROTO); /* truncated */
    CHECK_EQ(bad, 2);
    CHECK_EQ(qkd_sift_decode_slots(wcode, wlen, 3, (uint64_t)1 << 41, back, 3, &bad), QKD_ERANGE);
    CHECK_EQ(bad, 2);
    CHECK_EQ(qkd_sift_decode_slots(wcode, wlen, 2, UINT64_MAX, back, 3, &bad), QKD_EPROTO); /* trailing */
    CHECK_EQ(bad, 2);
    uint8_t overlong[11] = {0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02, 0};
    CHECK_EQ(qkd_sift_decode_slots(overlong, 10, 1, UINT64_MAX, back, 3, &bad), QKD_EPROTO);
    uint8_t eleven[11] = {0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0};
    CHECK_EQ(qkd_sift_decode_slots(eleven, 11, 1, UINT64_MAX, back, 3, &bad), QKD_EPROTO);
    CHECK_EQ(qkd_sift_check_slot_stream(wcode, wlen, 3, UINT64_MAX, &bad), QKD_OK);
    CHECK_EQ(qkd_sift_check_slot_stream(wcode, 7, 3, UINT64_MAX, &bad), QKD_EPROTO);
    CHECK_EQ(bad, 2);
    CHECK_EQ(qkd_sift_check_slot_stream(overlong, 10, 1, UINT64_MAX, &bad), QKD_EPROTO);
    /* eight one-byte gaps whose last slot is the frame's last, then one past it */
    uint8_t eight[8] = {3, 0, 0, 0, 0, 0, 0, 2}; /* slots 3..9, 12 */
    CHECK_EQ(qkd_sift_check_slot_stream(eight, 8, 8, 13, &bad), QKD_OK);
    CHECK_EQ(qkd_sift_check_slot_stream(eight, 8, 8, 12, &bad), QKD_ERANGE);
    CHECK_EQ(bad, 7);
    CHECK_EQ(qkd_sift_check_slot_stream(eight, 8, 8, 0, &bad), QKD_ERANGE);
    CHECK_EQ(bad, 0);
    uint8_t two_zero[2] = {5, 0}; /* slot 5, then slot 6 */
    CHECK_EQ(qkd_sift_decode_slots(two_zero, 2, 2, 7, back, 3, &bad), QKD_OK);
    CHECK(back[0] == 5 && back[1] == 6);
    CHECK_EQ(qkd_sift_decode_slots(two_zero, 2, 2, 6, back, 3, &bad), QKD_ERANGE);
    CHECK_EQ(qkd_sift_alice(states, N_SLOTS, code, code_len - 1, bob_basis, sizeof bob_basis / 8, count, N_CLASSES,
                            match, sizeof match / 8, classes, N_SLOTS, counts_a, N_GROUPS * QKD_SIFT_NCOUNTS, key_a,
                            kw, bits_a, N_GROUPS, scratch, N_SLOTS, &bad, features), QKD_EPROTO);

    /* refusals, each naming the record */
    uint64_t bad_slots[4] = {3, 9, 9, 12};
    CHECK_EQ(qkd_sift_check_slots(bad_slots, 4, 100, &bad), QKD_EPROTO);
    CHECK_EQ(bad, 2);
    bad_slots[2] = 5;
    CHECK_EQ(qkd_sift_check_slots(bad_slots, 4, 100, &bad), QKD_EPROTO);
    bad_slots[2] = 10;
    CHECK_EQ(qkd_sift_check_slots(bad_slots, 4, 12, &bad), QKD_ERANGE);
    CHECK_EQ(bad, 3);
    CHECK_EQ(qkd_sift_check_slots(bad_slots, 4, 13, &bad), QKD_OK);
    classes[5] = N_CLASSES;
    CHECK_EQ(qkd_sift_bob(basis, outcome, count, match, sizeof match / 8, classes, N_CLASSES, counts_b,
                          N_GROUPS * QKD_SIFT_NCOUNTS, key_b, kw, bits_b, N_GROUPS, scratch, N_SLOTS, &bad, features), QKD_EPROTO);
    CHECK_EQ(bad, 5);
    classes[5] = 0;
    outcome[7] = 2;
    CHECK_EQ(qkd_sift_bob(basis, outcome, count, match, sizeof match / 8, classes, N_CLASSES, counts_b,
                          N_GROUPS * QKD_SIFT_NCOUNTS, key_b, kw, bits_b, N_GROUPS, scratch, N_SLOTS, &bad, features), QKD_EINVAL);
    CHECK_EQ(bad, 7);
    CHECK_EQ(qkd_sift_bob(basis, outcome, count, match, sizeof match / 8, classes, N_CLASSES, counts_b,
                          N_GROUPS * QKD_SIFT_NCOUNTS, key_b, kw - 1, bits_b, N_GROUPS, scratch, N_SLOTS, &bad, features),
             QKD_ENOMEM);
    states[slots[4]] = 0x40;
    CHECK_EQ(qkd_sift_alice(states, N_SLOTS, code, code_len, bob_basis, sizeof bob_basis / 8, count, N_CLASSES, match,
                            sizeof match / 8, classes, N_SLOTS, counts_a, N_GROUPS * QKD_SIFT_NCOUNTS, key_a, kw,
                            bits_a, N_GROUPS, scratch, N_SLOTS, &bad, features), QKD_EINVAL);
    CHECK_EQ(bad, 4);
    CHECK_EQ(qkd_sift_sent_counts(states, N_SLOTS, N_CLASSES, counts_a, N_GROUPS * QKD_SIFT_NCOUNTS, &bad, features),
             QKD_EINVAL);
    CHECK_EQ(bad, slots[4]);
    CHECK_EQ(qkd_sift_sent_counts(states, N_SLOTS, 0, counts_a, N_GROUPS * QKD_SIFT_NCOUNTS, &bad, features), QKD_EINVAL);
    CHECK_EQ(qkd_sift_sent_counts(states, N_SLOTS, QKD_SIFT_MAX_CLASSES + 1, counts_a, 1000, &bad, features), QKD_EINVAL);
    return 0;
}

/* State bytes packed in one pass equal value | basis << 1 | class << 2; the first bad slot is named. */
static void test_pack_states(void)
{
    enum { N = 10007 };
    static uint8_t value[N], basis[N], cls[N], out[N];
    for (size_t i = 0; i < N; i++) {
        uint64_t r = next_u64();
        value[i] = (uint8_t)(r & 1);
        basis[i] = (uint8_t)(r >> 1 & 1);
        cls[i] = (uint8_t)((r >> 8) % N_CLASSES);
    }
    size_t bad = 0;
    CHECK_EQ(qkd_sift_pack_states(value, basis, cls, N, N_CLASSES, out, N, &bad), QKD_OK);
    int same = 1;
    for (size_t i = 0; i < N; i++)
        same &= out[i] == (uint8_t)(value[i] | basis[i] << 1 | cls[i] << QKD_SIFT_STATE_CLASS_SHIFT);
    CHECK(same);
    CHECK_EQ(qkd_sift_pack_states(value, basis, cls, N, N_CLASSES, out, N - 1, &bad), QKD_ENOMEM);
    CHECK_EQ(qkd_sift_pack_states(value, basis, cls, N, 0, out, N, &bad), QKD_EINVAL);
    value[9000] = 2;
    CHECK_EQ(qkd_sift_pack_states(value, basis, cls, N, N_CLASSES, out, N, &bad), QKD_EINVAL);
    CHECK_EQ(bad, 9000);
    value[9000] = 1;
    basis[5000] = 7;
    CHECK_EQ(qkd_sift_pack_states(value, basis, cls, N, N_CLASSES, out, N, &bad), QKD_EINVAL);
    CHECK_EQ(bad, 5000);
    basis[5000] = 0;
    cls[N - 1] = N_CLASSES;
    CHECK_EQ(qkd_sift_pack_states(value, basis, cls, N, N_CLASSES, out, N, &bad), QKD_EINVAL);
    CHECK_EQ(bad, N - 1);
}

/* The stream comparison agrees with encoding and comparing bytes: equal, one byte changed, one short or long,
 * slots that cannot be encoded. */
static void test_stream_equals(void)
{
    enum { N = 3000 };
    static uint64_t slots[N];
    static uint8_t code[N * QKD_SIFT_MAX_VARINT_BYTES + 1];
    uint64_t s = 0;
    for (size_t i = 0; i < N; i++) {
        s += 1 + next_u64() % (i % 7 == 0 ? 1u << 20 : 100);   /* one-byte and longer gaps */
        slots[i] = s;
    }
    size_t used = 0, bad = 0;
    CHECK_EQ(qkd_sift_encode_slots(slots, N, UINT64_MAX, code, sizeof code, &used, &bad), QKD_OK);
    CHECK_EQ(qkd_sift_stream_equals(slots, N, UINT64_MAX, code, used), 1);
    CHECK_EQ(qkd_sift_stream_equals(slots, N, UINT64_MAX, code, used - 1), 0);
    CHECK_EQ(qkd_sift_stream_equals(slots, N - 1, UINT64_MAX, code, used), 0);
    code[used] = 0;
    CHECK_EQ(qkd_sift_stream_equals(slots, N, UINT64_MAX, code, used + 1), 0);
    CHECK_EQ(qkd_sift_stream_equals(slots, N, slots[N - 1], code, used), 0);      /* last slot out of range */
    CHECK_EQ(qkd_sift_stream_equals(slots, 0, UINT64_MAX, code, 0), 1);
    for (size_t at = 0; at < used; at += used / 13 + 1) {
        code[at] ^= 0x01;
        CHECK_EQ(qkd_sift_stream_equals(slots, N, UINT64_MAX, code, used), 0);
        code[at] ^= 0x01;
    }
    slots[7] = slots[6];
    CHECK_EQ(qkd_sift_stream_equals(slots, N, UINT64_MAX, code, used), 0);
    /* eight at once must still refuse a slot at the top of the range followed by small ones (next wraps) and
     * one out of order, in every position of the eight */
    for (unsigned at = 0; at < 8; at++) {
        uint64_t top[16], back[16];
        uint8_t stream[16 * QKD_SIFT_MAX_VARINT_BYTES];
        for (unsigned j = 0; j < 16; j++)
            top[j] = j < at ? UINT64_MAX - 200 + j : j;
        top[at] = UINT64_MAX;
        CHECK_EQ(qkd_sift_encode_slots(top, 16, UINT64_MAX, stream, sizeof stream, &used, &bad), QKD_ERANGE);
        CHECK_EQ(bad, at);
        for (unsigned j = 0; j < 16; j++)
            back[j] = 10 * j;
        back[at + 1] = back[at];
        CHECK_EQ(qkd_sift_encode_slots(back, 16, UINT64_MAX, stream, sizeof stream, &used, &bad), QKD_EPROTO);
        CHECK_EQ(bad, at + 1);
        back[at + 1] = 10 * (at + 1);
        CHECK_EQ(qkd_sift_encode_slots(back, 16, UINT64_MAX, stream, sizeof stream, &used, &bad), QKD_OK);
        CHECK_EQ(used, 16);
        CHECK_EQ(qkd_sift_stream_equals(back, 16, UINT64_MAX, stream, used), 1);
        CHECK_EQ(qkd_sift_stream_equals(back, 16, back[15], stream, used), 0);
        stream[at] ^= 0x40;
        CHECK_EQ(qkd_sift_stream_equals(back, 16, UINT64_MAX, stream, used), 0);
    }
}

int main(void)
{
    test_pack_states();
    test_stream_equals();
    run(0);
    rng_state = 777;
    run(qkd_cpu_features());
    return check_report("test_sift");
}
