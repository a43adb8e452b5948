/* Scores a token sequence and writes its logits as text: a line "T V", then T × V values,
 * one a line, row-major (tests/c_examples.rs compares them with the CPU reference).
 *
 *   score MODEL_DIR DEVICE OUT_FILE TOKEN...
 */
#include "common.h"

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s MODEL_DIR cpu|emu|cuda|auto OUT_FILE TOKEN...\n", argv[0]);
        return 2;
    }
    size_t n = (size_t)(argc - 4);
    uint32_t *tokens = malloc(n * sizeof *tokens);
    if (tokens == NULL) {
        return 1;
    }
    for (size_t i = 0; i < n; i++) {
        tokens[i] = (uint32_t)strtoul(argv[4 + i], NULL, 10);
    }

    stag_model *model = NULL;
    /* f32 on every device, so the logits compare with the reference to rounding. */
    check(stag_model_load(argv[1], parse_device(argv[2]), 0, STAG_DTYPE_F32, &model),
          "stag_model_load");
    size_t vocab = 0;
    check(stag_model_vocab_size(model, &vocab), "stag_model_vocab_size");
    float *logits = malloc(n * vocab * sizeof *logits);
    if (logits == NULL) {
        return 1;
    }
    check(stag_score(model, tokens, n, logits, n * vocab), "stag_score");

    FILE *out = fopen(argv[3], "w");
    if (out == NULL) {
        perror(argv[3]);
        return 1;
    }
    fprintf(out, "%zu %zu\n", n, vocab);
    for (size_t i = 0; i < n * vocab; i++) {
        fprintf(out, "%.9g\n", logits[i]);
    }
    if (fclose(out) != 0) {
        perror(argv[3]);
        return 1;
    }
    free(logits);
    free(tokens);
    stag_model_free(model);
    return 0;
}
