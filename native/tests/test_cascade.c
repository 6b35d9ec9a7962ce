/* test_cascade.c - Cascade kernels end to end (Alice and Bob through wire payloads), determinism,
 * and refusal of malformed payloads; run under ASan/UBSan by `make test-asan`. */
#include "check.h"
#include "qkd_bits.h"
#include "qkd_cascade.h"
#include "qkd_prng.h"

#include <stdlib.h>
#include <string.h>

static const uint8_t SEED[32] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};

static void test_prng(void)
{
    qkd_prng a, b;
    CHECK_EQ(qkd_prng_init(&a, SEED, 32, 7), QKD_OK);
    CHECK_EQ(qkd_prng_init(&b, SEED, 32, 7), QKD_OK);
    CHECK_EQ(qkd_prng_init(&b, SEED, 31, 7), QKD_EINVAL);
    qkd_prng_init(&b, SEED, 32, 7);
    for (int i = 0; i < 100; i++)
        CHECK_EQ(qkd_prng_next(&a), qkd_prng_next(&b));
    qkd_prng_init(&b, SEED, 32, 8);
    CHECK(qkd_prng_next(&a) != qkd_prng_next(&b)); /* streams differ */
    for (int i = 0; i < 1000; i++)
        CHECK(qkd_prng_below(&a, 37) < 37);
    enum { N = 1001 };
    uint32_t perm[N], seen[N] = {0};
    CHECK_EQ(qkd_prng_permutation(&a, perm, N), QKD_OK);
    int ok = 1;
    for (int i = 0; i < N; i++) {
        if (perm[i] >= N || seen[perm[i]]++)
            ok = 0;
    }
    CHECK(ok);
    /* The batched shuffle equals textbook Fisher-Yates drawing one partner at a time. */
    uint32_t reference[N];
    qkd_prng_init(&a, SEED, 32, 3);
    qkd_prng_init(&b, SEED, 32, 3);
    qkd_prng_permutation(&a, perm, N);
    for (uint32_t i = 0; i < N; i++)
        reference[i] = i;
    for (uint32_t i = N; i > 1; i--) {
        uint32_t j = qkd_prng_below(&b, i), t = reference[i - 1];
        reference[i - 1] = reference[j];
        reference[j] = t;
    }
    CHECK_EQ(memcmp(perm, reference, sizeof perm), 0);
}

struct frame {
    size_t n, nwords;
    uint64_t *alice_key, *bob_key;
    size_t errors;
};

static struct frame make_frame(size_t n, double qber, uint64_t stream)
{
    struct frame f = {.n = n, .nwords = qkd_words_for_bits(n)};
    f.alice_key = calloc(f.nwords, 8);
    f.bob_key = calloc(f.nwords, 8);
    qkd_prng g;
    qkd_prng_init(&g, SEED, 32, 1000 + stream);
    for (size_t w = 0; w < f.nwords; w++)
        f.alice_key[w] = qkd_prng_next(&g);
    if (n % 64)
        f.alice_key[f.nwords - 1] &= ((uint64_t)1 << (n % 64)) - 1;
    memcpy(f.bob_key, f.alice_key, f.nwords * 8);
    f.errors = (size_t)(qber * (double)n + 0.5);
    uint32_t *perm = malloc(n * sizeof(uint32_t));
    qkd_prng_permutation(&g, perm, n);
    for (size_t i = 0; i < f.errors; i++)
        qkd_bit_flip(f.bob_key, perm[i]);
    free(perm);
    return f;
}

static void free_frame(struct frame *f)
{
    free(f->alice_key);
    free(f->bob_key);
}

/* Run one frame; returns 1 when Bob's key equals Alice's afterwards. */
static int reconcile_lookahead(struct frame *f, const uint32_t *kind, const uint32_t *block, size_t npasses,
                               qkd_cascade_stats *alice_stats, qkd_cascade_stats *bob_stats, uint32_t levels)
{
    qkd_cascade *alice, *bob;
    CHECK_EQ(qkd_cascade_new(&alice, QKD_CASCADE_ALICE, f->alice_key, f->nwords, f->n, SEED, 32, kind, block,
                             npasses), QKD_OK);
    CHECK_EQ(qkd_cascade_new(&bob, QKD_CASCADE_BOB, f->bob_key, f->nwords, f->n, SEED, 32, kind, block, npasses),
             QKD_OK);
    CHECK_EQ(qkd_cascade_bob_set_lookahead(bob, QKD_CASCADE_MAX_FEW_SEARCHES, levels), QKD_OK);
    CHECK_EQ(qkd_cascade_bob_set_lookahead(alice, 4, 2), QKD_EINVAL);
    CHECK_EQ(qkd_cascade_bob_set_lookahead(bob, 4, QKD_CASCADE_MAX_LOOKAHEAD + 1), QKD_EINVAL);
    size_t cap = (size_t)qkd_cascade_question_capacity_bytes(bob);
    uint8_t *questions = malloc(cap), *answers = malloc(cap);
    int64_t len = qkd_cascade_alice_top_parities(alice, answers, cap);
    CHECK(len > 0);
    CHECK_EQ(qkd_cascade_bob_set_top_parities(bob, answers, (size_t)len), QKD_OK);
    CHECK_EQ(qkd_cascade_bob_set_top_parities(bob, answers, (size_t)len), QKD_EPROTO); /* only once */
    for (;;) {
        int64_t qlen = qkd_cascade_bob_next_questions(bob, questions, cap);
        CHECK(qlen >= 0);
        if (qlen <= 0)
            break;
        CHECK_EQ(qkd_cascade_bob_next_questions(bob, questions, cap), QKD_EPROTO); /* answers first */
        int64_t alen = qkd_cascade_alice_answer(alice, questions, (size_t)qlen, answers, cap);
        CHECK(alen > 0);
        CHECK_EQ(qkd_cascade_bob_apply_answers(bob, answers, (size_t)alen), QKD_OK);
    }
    qkd_cascade_get_stats(alice, alice_stats);
    qkd_cascade_get_stats(bob, bob_stats);
    qkd_cascade_free(alice);
    qkd_cascade_free(bob);
    free(questions);
    free(answers);
    return memcmp(f->alice_key, f->bob_key, f->nwords * 8) == 0;
}

static int reconcile(struct frame *f, const uint32_t *kind, const uint32_t *block, size_t npasses,
                     qkd_cascade_stats *alice_stats, qkd_cascade_stats *bob_stats)
{
    return reconcile_lookahead(f, kind, block, npasses, alice_stats, bob_stats, 1);
}

static void test_lookahead(void)
{
    uint32_t kind[8] = {QKD_CASCADE_PASS_CONTIGUOUS, QKD_CASCADE_PASS_SHUFFLED}, block[8] = {16, 128};
    for (int i = 2; i < 8; i++)
        kind[i] = QKD_CASCADE_PASS_HALVES;
    for (uint32_t levels = 1; levels <= QKD_CASCADE_MAX_LOOKAHEAD; levels++) {
        qkd_cascade_stats one_a, one_b, many_a, many_b;
        struct frame f1 = make_frame(30000, 0.06, 50), f2 = make_frame(30000, 0.06, 50);
        CHECK(reconcile(&f1, kind, block, 8, &one_a, &one_b));
        CHECK(reconcile_lookahead(&f2, kind, block, 8, &many_a, &many_b, levels));
        CHECK_EQ(one_b.corrected_bits, f1.errors);
        CHECK_EQ(many_b.corrected_bits, f2.errors);
        CHECK_EQ(many_a.disclosed_bits, many_b.disclosed_bits);
        if (levels > 1) /* fewer rounds for more parities */
            CHECK(many_b.question_rounds < one_b.question_rounds && many_b.disclosed_bits > one_b.disclosed_bits);
        free_frame(&f1);
        free_frame(&f2);
    }
}

static void test_reconcile_schedules(void)
{
    /* Original schedule at 3 %: k1 = ceil(0.73 / Q) = 25, doubling, four passes. */
    const uint32_t orig_kind[] = {QKD_CASCADE_PASS_CONTIGUOUS, QKD_CASCADE_PASS_SHUFFLED, QKD_CASCADE_PASS_SHUFFLED,
                                  QKD_CASCADE_PASS_SHUFFLED};
    const uint32_t orig_block[] = {25, 50, 100, 200};
    /* Efficient schedule: powers of two, then random halves. */
    uint32_t eff_kind[14], eff_block[14];
    eff_kind[0] = QKD_CASCADE_PASS_CONTIGUOUS;
    eff_block[0] = 32;
    eff_kind[1] = QKD_CASCADE_PASS_SHUFFLED;
    eff_block[1] = 256;
    for (int i = 2; i < 14; i++) {
        eff_kind[i] = QKD_CASCADE_PASS_HALVES;
        eff_block[i] = 0;
    }
    const size_t sizes[] = {1, 2, 63, 1000, 10007, 200000};
    for (size_t t = 0; t < sizeof(sizes) / sizeof(sizes[0]); t++) {
        qkd_cascade_stats as, bs;
        struct frame f = make_frame(sizes[t], 0.03, t);
        CHECK(reconcile(&f, eff_kind, eff_block, 14, &as, &bs));
        CHECK_EQ(bs.corrected_bits, f.errors); /* exact noise: every flip was one error */
        CHECK_EQ(as.disclosed_bits, bs.disclosed_bits);
        CHECK_EQ(as.question_rounds, bs.question_rounds);
        CHECK_EQ(bs.passes_started, 14u);
        free_frame(&f);
        f = make_frame(sizes[t], 0.03, 100 + t);
        int ok = reconcile(&f, orig_kind, orig_block, 4, &as, &bs);
        if (sizes[t] >= 1000) /* the original schedule leaves errors with small probability */
            CHECK(ok || bs.corrected_bits < f.errors);
        CHECK_EQ(as.disclosed_bits, bs.disclosed_bits);
        free_frame(&f);
    }
}

static void test_deterministic(void)
{
    uint32_t kind[3] = {QKD_CASCADE_PASS_CONTIGUOUS, QKD_CASCADE_PASS_SHUFFLED, QKD_CASCADE_PASS_HALVES};
    uint32_t block[3] = {16, 64, 0};
    qkd_cascade_stats a1, b1, a2, b2;
    struct frame f1 = make_frame(5000, 0.05, 9), f2 = make_frame(5000, 0.05, 9);
    reconcile(&f1, kind, block, 3, &a1, &b1);
    reconcile(&f2, kind, block, 3, &a2, &b2);
    CHECK_EQ(b1.disclosed_bits, b2.disclosed_bits);
    CHECK_EQ(b1.question_rounds, b2.question_rounds);
    CHECK_EQ(memcmp(f1.bob_key, f2.bob_key, f1.nwords * 8), 0);
    free_frame(&f1);
    free_frame(&f2);
}

/* Answers with random parity bits flipped: Bob must end (done or refusing), never loop. */
static void test_lying_alice(void)
{
    uint32_t kind[6] = {QKD_CASCADE_PASS_CONTIGUOUS, QKD_CASCADE_PASS_SHUFFLED}, block[6] = {16, 128};
    for (int i = 2; i < 6; i++)
        kind[i] = QKD_CASCADE_PASS_HALVES;
    int refused = 0;
    for (int trial = 0; trial < 40; trial++) {
        struct frame f = make_frame(20000, 0.05, 300 + (uint64_t)trial);
        qkd_cascade *alice, *bob;
        qkd_cascade_new(&alice, QKD_CASCADE_ALICE, f.alice_key, f.nwords, f.n, SEED, 32, kind, block, 6);
        qkd_cascade_new(&bob, QKD_CASCADE_BOB, f.bob_key, f.nwords, f.n, SEED, 32, kind, block, 6);
        size_t cap = (size_t)qkd_cascade_question_capacity_bytes(bob);
        uint8_t *questions = malloc(cap), *answers = malloc(cap);
        int64_t len = qkd_cascade_alice_top_parities(alice, answers, cap);
        qkd_cascade_bob_set_top_parities(bob, answers, (size_t)len);
        qkd_prng g;
        qkd_prng_init(&g, SEED, 32, 900 + (uint64_t)trial);
        int rounds = 0;
        int64_t outcome;
        for (;; rounds++) {
            int64_t qlen = outcome = qkd_cascade_bob_next_questions(bob, questions, cap);
            if (qlen == QKD_EPROTO) {
                refused++;
                break;
            }
            CHECK(qlen >= 0);
            if (qlen <= 0)
                break;
            int64_t alen = qkd_cascade_alice_answer(alice, questions, (size_t)qlen, answers, cap);
            uint32_t count = (uint32_t)answers[0] | (uint32_t)answers[1] << 8 | (uint32_t)answers[2] << 16;
            uint32_t lie = qkd_prng_below(&g, count);
            if (qkd_prng_below(&g, 4) == 0) /* one round in four carries a wrong parity */
                answers[4 + lie / 8] ^= (uint8_t)(1u << (lie % 8));
            CHECK_EQ(qkd_cascade_bob_apply_answers(bob, answers, (size_t)alen), QKD_OK);
        }
        CHECK(rounds < 100000);
        CHECK_EQ(qkd_cascade_bob_next_questions(bob, questions, cap), outcome); /* stays refused, or done */
        qkd_cascade_free(alice);
        qkd_cascade_free(bob);
        free(questions);
        free(answers);
        free_frame(&f);
    }
    CHECK(refused > 0); /* contradictions are noticed, not just survived */
}

static void test_bad_input(void)
{
    uint64_t key[4] = {0x0123456789abcdefull, 0, ~0ull, 5};
    uint32_t kind[2] = {QKD_CASCADE_PASS_CONTIGUOUS, QKD_CASCADE_PASS_HALVES};
    uint32_t block[2] = {8, 0};
    uint32_t bad_kind[1] = {7}, zero_block[1] = {0};
    qkd_cascade *c = NULL;
    CHECK_EQ(qkd_cascade_new(&c, 2, key, 4, 256, SEED, 32, kind, block, 2), QKD_EINVAL);
    CHECK_EQ(qkd_cascade_new(&c, QKD_CASCADE_BOB, key, 3, 256, SEED, 32, kind, block, 2), QKD_ERANGE);
    CHECK_EQ(qkd_cascade_new(&c, QKD_CASCADE_BOB, key, 4, 0, SEED, 32, kind, block, 2), QKD_EINVAL);
    CHECK_EQ(qkd_cascade_new(&c, QKD_CASCADE_BOB, key, 4, 256, SEED, 16, kind, block, 2), QKD_EINVAL);
    CHECK_EQ(qkd_cascade_new(&c, QKD_CASCADE_BOB, key, 4, 256, SEED, 32, bad_kind, block, 1), QKD_EINVAL);
    CHECK_EQ(qkd_cascade_new(&c, QKD_CASCADE_BOB, key, 4, 256, SEED, 32, kind, zero_block, 1), QKD_EINVAL);
    CHECK_EQ(qkd_cascade_new(&c, QKD_CASCADE_BOB, key, 4, 256, SEED, 32, kind, block, 0), QKD_EINVAL);
    CHECK(c == NULL);

    qkd_cascade *alice, *bob;
    CHECK_EQ(qkd_cascade_new(&alice, QKD_CASCADE_ALICE, key, 4, 256, SEED, 32, kind, block, 2), QKD_OK);
    CHECK_EQ(qkd_cascade_new(&bob, QKD_CASCADE_BOB, key, 4, 256, SEED, 32, kind, block, 2), QKD_OK);
    uint8_t out[64], q[64];
    CHECK_EQ(qkd_cascade_bob_next_questions(bob, q, sizeof q), QKD_EPROTO);      /* no parities yet */
    CHECK_EQ(qkd_cascade_bob_apply_answers(bob, out, 5), QKD_EPROTO);            /* nothing asked */
    CHECK_EQ(qkd_cascade_alice_top_parities(alice, out, 4), QKD_ENOMEM);
    int64_t len = qkd_cascade_alice_top_parities(alice, out, sizeof out);
    CHECK_EQ(len, 4 + (32 + 2 + 7) / 8);
    CHECK_EQ(qkd_cascade_bob_set_top_parities(bob, out, (size_t)len - 1), QKD_EPROTO); /* truncated */
    uint8_t padded[16];
    memcpy(padded, out, (size_t)len);
    padded[len - 1] |= 0x80; /* 34 parities: bit 7 of the last byte is padding */
    CHECK_EQ(qkd_cascade_bob_set_top_parities(bob, padded, (size_t)len), QKD_EPROTO);
    CHECK_EQ(qkd_cascade_alice_top_parities(bob, out, sizeof out), QKD_EINVAL); /* wrong role */

    /* Questions: count larger than the payload, out-of-range pass, range past the end, empty range. */
    memset(q, 0, sizeof q);
    q[0] = 2;
    CHECK_EQ(qkd_cascade_alice_answer(alice, q, 13, out, sizeof out), QKD_EPROTO);
    CHECK_EQ(qkd_cascade_alice_answer(alice, q, 3, out, sizeof out), QKD_EPROTO);
    q[0] = 0xff;
    q[1] = 0xff;
    q[2] = 0xff;
    q[3] = 0xff; /* count 2^32 - 1: must not overflow the length check */
    CHECK_EQ(qkd_cascade_alice_answer(alice, q, 13, out, sizeof out), QKD_EPROTO);
    memset(q, 0, sizeof q);
    q[0] = 1;
    q[4] = 5; /* pass 5 */
    q[9] = 1;
    CHECK_EQ(qkd_cascade_alice_answer(alice, q, 13, out, sizeof out), QKD_EPROTO);
    q[4] = 1;
    q[5] = 0xff; /* start 255, length 1: last bit, fine */
    CHECK_EQ(qkd_cascade_alice_answer(alice, q, 13, out, sizeof out), 5);
    q[9] = 2; /* start 255, length 2: past the end */
    CHECK_EQ(qkd_cascade_alice_answer(alice, q, 13, out, sizeof out), QKD_EPROTO);
    q[9] = 0; /* empty range */
    CHECK_EQ(qkd_cascade_alice_answer(alice, q, 13, out, sizeof out), QKD_EPROTO);
    q[5] = 0xff;
    q[6] = 0xff;
    q[7] = 0xff;
    q[8] = 0xff;
    q[9] = 0xff;
    q[10] = 0xff;
    q[11] = 0xff;
    q[12] = 0xff; /* start + length overflows 32 bits */
    CHECK_EQ(qkd_cascade_alice_answer(alice, q, 13, out, sizeof out), QKD_EPROTO);
    qkd_cascade_free(alice);
    qkd_cascade_free(bob);
    qkd_cascade_free(NULL);
}

/* BICONF rounds (HALVES passes after the configured ones) find errors the configured passes cannot
 * see: two errors in one block of a single contiguous pass leave its parity even. Each round splits
 * them with probability 1/2; then both halves are odd and searched, and the corrections cascade
 * back into pass 0. */
static void test_biconf_fixes_residual_errors(void)
{
    enum { ROUNDS = 24 };
    uint32_t kind[1 + ROUNDS] = {QKD_CASCADE_PASS_CONTIGUOUS}, block[1 + ROUNDS] = {4096};
    for (int i = 1; i <= ROUNDS; i++)
        kind[i] = QKD_CASCADE_PASS_HALVES;
    qkd_cascade_stats as, bs, as0, bs0;
    struct frame f = make_frame(4096, 0.0, 60);
    qkd_bit_flip(f.bob_key, 100);
    qkd_bit_flip(f.bob_key, 3000);
    CHECK(!reconcile(&f, kind, block, 1, &as0, &bs0)); /* without BICONF: both errors stay */
    CHECK_EQ(bs0.corrected_bits, 0u);
    CHECK(reconcile(&f, kind, block, 1 + ROUNDS, &as, &bs));
    CHECK_EQ(bs.corrected_bits, 2u);
    CHECK_EQ(as.disclosed_bits, bs.disclosed_bits);
    CHECK(bs.disclosed_bits >= bs0.disclosed_bits + 2 * ROUNDS); /* subset and complement per round */
    free_frame(&f);
}

int main(void)
{
    test_prng();
    test_reconcile_schedules();
    test_deterministic();
    test_lookahead();
    test_lying_alice();
    test_bad_input();
    test_biconf_fixes_residual_errors();
    return check_report("test_cascade");
}
