/* Generates from two prompts in one decoder: sequence 0 greedy, sequence 1 sampled, both in
 * every step. Prints "greedy: ..." and "sampled: ..." with the new token ids (the greedy line
 * is checked against the CPU reference by tests/c_examples.rs), then checks that a removed
 * sequence's id is refused.
 *
 *   generate MODEL_DIR emu|cuda|auto [NEW_TOKENS]
 */
#include "common.h"

#define MAX_NEW 64

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL_DIR emu|cuda|auto [NEW_TOKENS]\n", argv[0]);
        return 2;
    }
    size_t new_tokens = argc > 3 ? (size_t)strtoul(argv[3], NULL, 10) : 8;
    if (new_tokens == 0 || new_tokens > MAX_NEW) {
        fprintf(stderr, "NEW_TOKENS must be 1..%d\n", MAX_NEW);
        return 2;
    }
    const uint32_t prompt0[] = {1, 2, 3, 4, 5};
    const uint32_t prompt1[] = {7, 8, 9};

    stag_model *model = NULL;
    check(stag_model_load(argv[1], parse_device(argv[2]), 0, STAG_DTYPE_AUTO, &model),
          "stag_model_load");
    stag_decoder *decoder = NULL;
    check(stag_decoder_new(model, 2, 5 + MAX_NEW, STAG_EXEC_STAGGERED, 16, &decoder),
          "stag_decoder_new");
    stag_model_free(model); /* the decoder holds its own weights */

    stag_seq_id seqs[2];
    check(stag_decoder_add(decoder, &seqs[0]), "stag_decoder_add");
    check(stag_decoder_add(decoder, &seqs[1]), "stag_decoder_add");
    const stag_sampling greedy = {0.0f, 0, 1.0f, 0};
    const stag_sampling warm = {0.8f, 20, 0.95f, 42};

    /* The first step feeds both prompts; every later one a decode token per sequence. */
    stag_row rows[2] = {
        {seqs[0], prompt0, 5, STAG_ROW_SAMPLE, greedy},
        {seqs[1], prompt1, 3, STAG_ROW_SAMPLE, warm},
    };
    uint32_t out[2][MAX_NEW];
    uint32_t next[2];
    for (size_t step = 0; step < new_tokens; step++) {
        check(stag_decoder_step(decoder, rows, 2, NULL, 0, next, 2, NULL, 0),
              "stag_decoder_step");
        for (int r = 0; r < 2; r++) {
            out[r][step] = next[r];
            rows[r].tokens = &out[r][step];
            rows[r].n_tokens = 1;
        }
    }
    const char *labels[2] = {"greedy", "sampled"};
    for (int r = 0; r < 2; r++) {
        printf("%s:", labels[r]);
        for (size_t i = 0; i < new_tokens; i++) {
            printf(" %u", out[r][i]);
        }
        printf("\n");
    }

    /* A removed sequence's id is stale: refused, with a message, never another sequence. */
    check(stag_decoder_remove(decoder, seqs[0]), "stag_decoder_remove");
    size_t len = 0;
    if (stag_decoder_len(decoder, seqs[0], &len) != STAG_STATUS_REQUEST) {
        fprintf(stderr, "a removed sequence's id was not refused\n");
        return 1;
    }
    check(stag_decoder_len(decoder, seqs[1], &len), "stag_decoder_len");
    if (len != 3 + new_tokens - 1) {
        fprintf(stderr, "sequence 1 holds %zu tokens, expected %zu\n", len, 3 + new_tokens - 1);
        return 1;
    }
    stag_decoder_free(decoder);
    return 0;
}
