/* Drives a model compiled by `snnc build --target cpu` through its C header and shared library:
 * reads every input, parameter and state buffer (raw float32, argument order) from argv[1],
 * calls the forward function through its real prototype, and prints every state and output
 * buffer as one line: "<argument index> <value> <value> ...".
 *
 * Build: cc -I DIR -DSNNC_HEADER='"Model.h"' -DSNNC_MODEL=Model run_forward.c
 *           -L DIR -lModel -Wl,-rpath,DIR   (compiler/tests/cpu_backend.rs does this) */
#include <stdio.h>
#include <stdlib.h>

#include SNNC_HEADER

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define NUM_ARGS CAT(SNNC_MODEL, _NUM_ARGS)
#define ARG_SIZES CAT(SNNC_MODEL, _ARG_SIZES)
#define ARG_ROLES CAT(SNNC_MODEL, _ARG_ROLES)
#define FORWARD_ARGV CAT(SNNC_MODEL, _FORWARD_ARGV)

int main(int argc, char **argv) {
    static const size_t sizes[NUM_ARGS] = ARG_SIZES;
    const char *roles = ARG_ROLES;
    float *args[NUM_ARGS];
    if (argc != 2) {
        fprintf(stderr, "usage: %s ARGS.bin\n", argv[0]);
        return 2;
    }
    FILE *in = fopen(argv[1], "rb");
    if (!in) {
        perror(argv[1]);
        return 1;
    }
    for (int k = 0; k < NUM_ARGS; k++) {
        args[k] = malloc(sizes[k] * sizeof(float));
        if (!args[k]) {
            fprintf(stderr, "out of memory\n");
            return 1;
        }
        if (roles[k] != 'o' && fread(args[k], sizeof(float), sizes[k], in) != sizes[k]) {
            fprintf(stderr, "%s: too short for argument %d\n", argv[1], k);
            return 1;
        }
    }
    fclose(in);

    FORWARD_ARGV(args);

    for (int k = 0; k < NUM_ARGS; k++) {
        if (roles[k] == 's' || roles[k] == 'o') {
            printf("%d", k);
            for (size_t i = 0; i < sizes[k]; i++) {
                printf(" %.9g", args[k][i]);
            }
            printf("\n");
        }
        free(args[k]);
    }
    return 0;
}
