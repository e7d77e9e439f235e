/* Column helpers for loading a snapshot (aurora_log/local/snapfile.py): loops over a
 * million entries that Python would run element by element. */
#include "aurora.h"

/* out[0] = start, out[k + 1] = out[k] + v[k] for k < n (n + 1 entries); returns out[n]. */
uint64_t au_prefix_sum_u32(const uint32_t *v, uint64_t n, uint64_t start, uint64_t *out)
{
    uint64_t acc = start;
    out[0] = acc;
    for (uint64_t k = 0; k < n; k++) {
        acc += v[k];
        out[k + 1] = acc;
    }
    return acc;
}
