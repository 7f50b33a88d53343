/* PNG row filtering for our PNG writer (io/png.py), built on the machine that runs it (upscale.native).
 *
 * For each scanline, every one of PNG's five filters (none, sub, up, average, paeth) is applied and the
 * one whose filtered bytes have the smallest sum of absolute values (each byte read as a signed int8)
 * is kept, ties going to the lower filter type: the heuristic the PNG specification recommends, and
 * exactly what io/png.py's numpy version computes (a test compares the two byte for byte).
 *
 * Every filter reads the unfiltered bytes (the row above comes from the image too), so a block of rows
 * is filtered with no state from the block before it, and blocks run on several threads at once.
 * The first pass over a row sums the five costs in one loop the compiler vectorises (no branches: the
 * Paeth predictor's choice is written as selects); the second writes the chosen filter's bytes.
 */

#include <stdint.h>
#include <string.h>

static inline uint8_t paeth(int a, int b, int c) {
    int pa = b - c, pb = a - c, pc = a + b - 2 * c;
    pa = pa < 0 ? -pa : pa;
    pb = pb < 0 ? -pb : pb;
    pc = pc < 0 ? -pc : pc;
    int bc = pb <= pc ? b : c;
    return (uint8_t)((pa <= pb && pa <= pc) ? a : bc);
}

static inline uint32_t cost(uint8_t v) {     /* |v as int8|: 0..128 */
    uint8_t n = (uint8_t)(0u - v);
    return v < n ? v : n;
}

static inline uint8_t average(uint8_t a, uint8_t b) {
    return (uint8_t)((a + b) >> 1);
}

/* The five filters' costs over bytes [from, to) of row x (b the row above); a and c (the bytes one
 * pixel to the left) are zero in the first pixel, which the caller passes as its own range. */
static void add_costs(const uint8_t *x, const uint8_t *b, int64_t from, int64_t to, int64_t bpp, int left,
                      uint32_t costs[5]) {
    uint32_t c0 = 0, c1 = 0, c2 = 0, c3 = 0, c4 = 0;
    for (int64_t i = from; i < to; i++) {
        uint8_t xv = x[i], bv = b[i];
        uint8_t av = left ? x[i - bpp] : 0, cv = left ? b[i - bpp] : 0;
        c0 += cost(xv);
        c1 += cost((uint8_t)(xv - av));
        c2 += cost((uint8_t)(xv - bv));
        c3 += cost((uint8_t)(xv - average(av, bv)));
        c4 += cost((uint8_t)(xv - paeth(av, bv, cv)));
    }
    costs[0] += c0, costs[1] += c1, costs[2] += c2, costs[3] += c3, costs[4] += c4;
}

/* Row x filtered by filter ``best`` (b the row above) into y; one loop per filter, so each vectorises. */
static void write_filtered(const uint8_t *x, const uint8_t *b, int64_t n, int64_t bpp, int64_t head, int best,
                           uint8_t *y) {
    switch (best) {
    case 0:
        memcpy(y, x, (size_t)n);
        break;
    case 1:
        memcpy(y, x, (size_t)head);
        for (int64_t i = head; i < n; i++) y[i] = (uint8_t)(x[i] - x[i - bpp]);
        break;
    case 2:
        for (int64_t i = 0; i < n; i++) y[i] = (uint8_t)(x[i] - b[i]);
        break;
    case 3:
        for (int64_t i = 0; i < head; i++) y[i] = (uint8_t)(x[i] - (b[i] >> 1));
        for (int64_t i = head; i < n; i++) y[i] = (uint8_t)(x[i] - average(x[i - bpp], b[i]));
        break;
    default:
        for (int64_t i = 0; i < head; i++) y[i] = (uint8_t)(x[i] - b[i]);      /* paeth(0, b, 0) = b */
        for (int64_t i = head; i < n; i++) y[i] = (uint8_t)(x[i] - paeth(x[i - bpp], b[i], b[i - bpp]));
    }
}

/* Filter ``rows`` rows starting at x (each row_bytes bytes, bpp bytes per pixel; ``above`` is the row
 * above the first: the image's previous row, or zeros for its first) into out: per row its filter type
 * byte, then the filtered bytes, rows * (row_bytes + 1) bytes in all. */
void png_filter_rows(const uint8_t *x, const uint8_t *above, int64_t rows, int64_t row_bytes, int64_t bpp,
                     uint8_t *out) {
    int64_t head = bpp < row_bytes ? bpp : row_bytes;
    for (int64_t r = 0; r < rows; r++, x += row_bytes) {
        const uint8_t *b = r ? x - row_bytes : above;
        uint32_t costs[5] = {0, 0, 0, 0, 0};
        add_costs(x, b, 0, head, bpp, 0, costs);
        add_costs(x, b, head, row_bytes, bpp, 1, costs);
        int best = 0;
        for (int k = 1; k < 5; k++)
            if (costs[k] < costs[best])
                best = k;
        uint8_t *y = out + r * (row_bytes + 1);
        *y++ = (uint8_t)best;
        write_filtered(x, b, row_bytes, bpp, head, best, y);
    }
}
