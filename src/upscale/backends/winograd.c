/* The transforms of Winograd F(4x4, 3x3) for upscale's winograd backend (backends/winograd.py):
 * fp32 feature maps in NHWC, the Winograd domain as 36 matrices (36, tiles, channels) for the GEMMs
 * torch runs between the two transforms.
 *
 * Built on the machine that runs it (backends/winograd_native.py: the C compiler with -O3
 * -march=native -fopenmp, cached per source, compiler and CPU), and loaded with ctypes. The loops
 * are written with GCC/Clang vector types of 16 floats, which the compiler maps to the widest
 * registers the CPU has (one AVX-512 register, two AVX2 ones, four NEON ones).
 *
 * Threads: OpenMP, with the thread count the caller passes (torch's). The shared object asks for
 * libgomp.so.1, which torch has loaded already, so both share one pool of threads: a second pool
 * would spin on the same cores while the other works.
 *
 * Tiles are numbered image by image, row by row: tile t of a map of h x w px (both multiples of 4)
 * covers output rows 4*ty .. 4*ty+3 and columns 4*tx .. 4*tx+3. Its input tile is the 6x6 px around
 * them, zero beyond the map (the convolution's padding of 1).
 */
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

typedef float vf __attribute__((vector_size(64), aligned(4)));     /* 16 channels, any alignment */
typedef int32_t vi __attribute__((vector_size(64), aligned(4)));
#define VL 16

/* n (<= 16) channels from p; those past n are 0 */
static inline vf load(const float *p, int64_t n) {
    vf v;
    if (n == VL) {
        memcpy(&v, p, sizeof v);
    } else {
        v = (vf){0};
        for (int64_t k = 0; k < n; k++) v[k] = p[k];
    }
    return v;
}

static inline void store(float *p, vf v, int64_t n) {
    if (n == VL) {
        memcpy(p, &v, sizeof v);
    } else {
        for (int64_t k = 0; k < n; k++) p[k] = v[k];
    }
}

/* A store that bypasses the cache where it can: the Winograd domain is written once and read by the
   GEMMs later. Written through the cache, each of its 36 scattered streams first read every line it
   was about to overwrite; that made the input transform of a 256x256 map several times slower. */
static inline void store_streaming(float *p, vf v, int64_t n) {
#if defined(__AVX512F__)
    if (n == VL && ((uintptr_t)p & 63) == 0) {
        _mm512_stream_ps(p, (__m512)v);
        return;
    }
#endif
    store(p, v, n);
}

static inline void fence(void) {
#if defined(__AVX512F__)
    _mm_sfence();       /* this thread's streaming stores are visible before the GEMM reads them */
#endif
}

/* o = B^T z for six vectors z (Lavin & Gray's F(4x4, 3x3) input transform, one dimension) */
#define B_T(z, o) do {                                \
        o[0] = 4.f * z[0] - 5.f * z[2] + z[4];            \
        o[1] = -4.f * z[1] - 4.f * z[2] + z[3] + z[4];    \
        o[2] = 4.f * z[1] - 4.f * z[2] - z[3] + z[4];     \
        o[3] = -2.f * z[1] - z[2] + 2.f * z[3] + z[4];    \
        o[4] = 2.f * z[1] - z[2] - 2.f * z[3] + z[4];     \
        o[5] = 4.f * z[1] - 5.f * z[3] + z[5];            \
    } while (0)

/* o = A^T z: four outputs of six (the output transform, one dimension) */
#define A_T(z, o) do {                                    \
        o[0] = z[0] + z[1] + z[2] + z[3] + z[4];              \
        o[1] = z[1] - z[2] + 2.f * z[3] - 2.f * z[4];         \
        o[2] = z[1] + z[2] + 4.f * z[3] + 4.f * z[4];         \
        o[3] = z[1] - z[2] + 8.f * z[3] - 8.f * z[4] + z[5];  \
    } while (0)

/* x (n, h, w, c) -> V[ab][t][lo + ch] = (B^T d B)[a][b] of each tile's 6x6 input d, channel by
   channel; V is (36, tiles, cv) and takes the map's channels at [lo, lo + c). */
void winograd_input(const float *x, float *v, int64_t n, int64_t h, int64_t w, int64_t c, int64_t cv,
                    int64_t lo, int threads) {
    const int64_t th = h / 4, tw = w / 4, tiles = n * th * tw, plane = tiles * cv;
    #pragma omp parallel num_threads(threads)
    {
        #pragma omp for schedule(static)
        for (int64_t t = 0; t < tiles; t++) {
            const int64_t img = t / (th * tw), r = t % (th * tw);
            const int64_t y0 = 4 * (r / tw) - 1, x0 = 4 * (r % tw) - 1;
            int row_in[6], col_in[6];
            for (int i = 0; i < 6; i++) {
                row_in[i] = y0 + i >= 0 && y0 + i < h;
                col_in[i] = x0 + i >= 0 && x0 + i < w;
            }
            const int64_t corner = ((img * h + y0) * w + x0) * c;  /* may lie before x: an index, not a pointer */
            float *out = v + t * cv + lo;
            for (int64_t c0 = 0; c0 < c; c0 += VL) {
                const int64_t cn = c - c0 < VL ? c - c0 : VL;
                vf rows[6][6];                  /* rows[i] = B^T of input row i, along the width */
                for (int i = 0; i < 6; i++) {
                    vf d[6];
                    for (int j = 0; j < 6; j++)
                        d[j] = row_in[i] && col_in[j] ? load(x + (corner + (i * w + j) * c + c0), cn) : (vf){0};
                    B_T(d, rows[i]);
                }
                for (int b = 0; b < 6; b++) {   /* then along the height, column b of rows */
                    vf z[6], o[6];
                    for (int i = 0; i < 6; i++) z[i] = rows[i][b];
                    B_T(z, o);
                    for (int a = 0; a < 6; a++) store_streaming(out + (a * 6 + b) * plane + c0, o[a], cn);
                }
            }
        }
        fence();
    }
}

/* M (36, tiles, c) -> y (n, h, w, c): each tile's A^T m A, plus bias, through a LeakyReLU of this slope
   (1: none), zero at rows >= height or columns >= width; with res (n, h, w, c) not NULL, y = res +
   scale * that instead. */
void winograd_output(const float *m, const float *bias, float *y, const float *res, int64_t n, int64_t h,
                     int64_t w, int64_t c, int64_t height, int64_t width, float slope, float scale,
                     int threads) {
    const int64_t th = h / 4, tw = w / 4, tiles = n * th * tw, plane = tiles * c;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t t = 0; t < tiles; t++) {
        const int64_t img = t / (th * tw), r = t % (th * tw), y0 = 4 * (r / tw), x0 = 4 * (r % tw);
        for (int64_t c0 = 0; c0 < c; c0 += VL) {
            const int64_t cn = c - c0 < VL ? c - c0 : VL;
            vf half[6][4];                      /* half[a] = A^T of row a of the tile's M, along b */
            for (int a = 0; a < 6; a++) {
                vf z[6];
                for (int b = 0; b < 6; b++) z[b] = load(m + (a * 6 + b) * plane + t * c + c0, cn);
                A_T(z, half[a]);
            }
            const vf b_v = load(bias + c0, cn);
            for (int k = 0; k < 4; k++) {       /* then along a: output column k of the tile */
                vf z[6], o[4];
                for (int a = 0; a < 6; a++) z[a] = half[a][k];
                A_T(z, o);
                for (int i = 0; i < 4; i++) {
                    const int64_t at = ((img * h + y0 + i) * w + x0 + k) * c + c0;
                    vf val = o[i] + b_v;
                    const vi negative = val < 0.f;
                    val = (vf)(((vi)(val * slope) & negative) | ((vi)val & ~negative));
                    if (y0 + i >= height || x0 + k >= width) val = (vf){0};
                    if (res) val = load(res + at, cn) + scale * val;
                    store(y + at, val, cn);
                }
            }
        }
    }
}
