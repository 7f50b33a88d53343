/* Winograd F(4x4, 3x3) convolutions for upscale's winograd backend (backends/winograd.py): fp32
 * feature maps in NHWC, one whole 3x3 convolution per call (winograd_conv).
 *
 * Why one call does all three steps: a convolution is an input transform (each 6x6 input tile to the
 * Winograd domain), 36 GEMMs over the channels, and an output transform. Done as three passes over
 * the whole map, the domain (2.25x the map's size) goes to memory and back between them, and GEMMs
 * on it run at about half the speed they reach on data in cache. Here each thread takes a block of
 * tiles through the three steps in two small buffers that stay in its core's L2 cache (the block's
 * size is chosen from that cache's size by the caller); the maps are read and written once. The
 * output pass also applies what follows the convolution in our networks (bias, a leaky ReLU/PReLU,
 * SiLU or SPAN's gate, a scaled residual), so no elementwise pass over the map is left to torch.
 *
 * The GEMMs are register-blocked: R tile rows times NV vectors of output channels accumulate in
 * registers (R * NV = ACC: 24 of AVX-512's 32 registers, 12 of AVX2's 16), each input value broadcast
 * once per group of output vectors.
 *
 * Built on the machine that runs it (backends/winograd_native.py: the C compiler with -O3
 * -march=native -fopenmp, cached per source, compiler and CPU), and loaded with ctypes. The loops
 * are written with GCC/Clang vector types of VL floats (16 where the CPU has AVX-512, else 8), which
 * the compiler maps to the widest registers the CPU has (one AVX-512 or AVX2 register, two NEON ones).
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
#include <omp.h>

#if defined(__AVX512F__)
#define VL 16           /* channels per vector: one of AVX-512's 32 registers */
#define ACC 24          /* vectors the GEMM kernel accumulates in registers */
#else
#define VL 8            /* one AVX2 register of 16 (two of NEON's 32) */
#define ACC 12
#endif
typedef float vf __attribute__((vector_size(VL * 4), aligned(4)));    /* VL channels, any alignment */
typedef int32_t vi __attribute__((vector_size(VL * 4), aligned(4)));
/* a vector read or written in place: may_alias, so that GCC keeps the vectors it loads in registers
   (through memcpy, its AVX2 code kept the GEMM's accumulators on the stack: 10x slower) */
typedef float vf_in_memory __attribute__((vector_size(VL * 4), aligned(4), may_alias));

/* n (<= VL) channels from p; those past n are 0 */
static inline vf load(const float *p, int64_t n) {
    if (n == VL)
        return *(const vf_in_memory *)p;
    vf v = (vf){0};
    for (int64_t k = 0; k < n; k++) v[k] = p[k];
    return v;
}

static inline void store(float *p, vf v, int64_t n) {
    if (n == VL) {
        *(vf_in_memory *)p = v;
    } else {
        for (int64_t k = 0; k < n; k++) p[k] = v[k];
    }
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

#define KC 64           /* input channels transformed and multiplied at a time */
/* the block buffers' 36 planes lie this many floats (a cache line) further apart than they need: at a
   multiple of 2 KB, their 36 streams would share a few of the L1 cache's sets and evict each other */
#define SKEW 16

/* m[r][j] = (accumulate ? m[r][j] : 0) + sum_k v[r][k] u[k][j] for R = ACC / NV rows and NV vectors of
   columns: the ACC accumulators stay in registers, each v[r][k] broadcast once per k */
#define GEMM_KERNEL(NV)                                                                                 \
    static void gemm_##NV(const float *restrict v, int64_t ldv, const float *restrict u,             \
                                int64_t ldu, int64_t kc, float *restrict m, int64_t ldm, int accumulate) { \
        enum { R = ACC / NV };                                                                         \
        vf acc[R][NV];                                                                                 \
        _Pragma("GCC unroll 24") for (int r = 0; r < R; r++)                                            \
            _Pragma("GCC unroll 4") for (int j = 0; j < NV; j++)                                        \
                acc[r][j] = accumulate ? load(m + r * ldm + j * VL, VL) : (vf){0};                     \
        for (int64_t k = 0; k < kc; k++) {                                                             \
            vf col[NV];                                                                                \
            _Pragma("GCC unroll 4") for (int j = 0; j < NV; j++) col[j] = load(u + k * ldu + j * VL, VL); \
            _Pragma("GCC unroll 24") for (int r = 0; r < R; r++) {                                      \
                const float s = v[r * ldv + k];                                                        \
                _Pragma("GCC unroll 4") for (int j = 0; j < NV; j++) acc[r][j] += s * col[j];           \
            }                                                                                          \
        }                                                                                              \
        _Pragma("GCC unroll 24") for (int r = 0; r < R; r++)                                            \
            _Pragma("GCC unroll 4") for (int j = 0; j < NV; j++) store(m + r * ldm + j * VL, acc[r][j], VL); \
    }
GEMM_KERNEL(1)
GEMM_KERNEL(2)
GEMM_KERNEL(3)
GEMM_KERNEL(4)

/* B^T d B of one tile's 6x6 input vectors d[row][column], point (a, b) to out + (a * 6 + b) * plane */
static inline __attribute__((always_inline)) void tile_input(vf d[6][6], float *out, int64_t plane, int64_t cn) {
    vf rows[6][6];                          /* rows[i] = B^T of input row i, along the width */
    _Pragma("GCC unroll 6") for (int i = 0; i < 6; i++) B_T(d[i], rows[i]);
    _Pragma("GCC unroll 6") for (int b = 0; b < 6; b++) {       /* then along the height */
        vf z[6], o[6];
        _Pragma("GCC unroll 6") for (int i = 0; i < 6; i++) z[i] = rows[i][b];
        B_T(z, o);
        _Pragma("GCC unroll 6") for (int a = 0; a < 6; a++) store(out + (a * 6 + b) * plane, o[a], cn);
    }
}

/* the block's tiles t0 .. t0+nt-1, channels [k0, k0 + kc) of x (n, h, w, c) -> vb (36, block, kc)
   (planes SKEW apart); rows nt .. block-1 zero */
static void block_input(const float *x, int64_t h, int64_t w, int64_t c, int64_t k0, int64_t kc,
                        int64_t t0, int64_t nt, int64_t block, float *vb) {
    const int64_t th = h / 4, tw = w / 4, plane = block * kc + SKEW;
    for (int64_t i = 0; i < block; i++) {
        float *out = vb + i * kc;
        if (i >= nt) {
            for (int ab = 0; ab < 36; ab++) memset(out + ab * plane, 0, kc * sizeof(float));
            continue;
        }
        const int64_t t = t0 + i, img = t / (th * tw), r = t % (th * tw);
        const int64_t y0 = 4 * (r / tw) - 1, x0 = 4 * (r % tw) - 1;
        const int inside = y0 >= 0 && y0 + 6 <= h && x0 >= 0 && x0 + 6 <= w;
        int row_in[6], col_in[6];
        for (int q = 0; q < 6; q++) {
            row_in[q] = y0 + q >= 0 && y0 + q < h;
            col_in[q] = x0 + q >= 0 && x0 + q < w;
        }
        const int64_t corner = ((img * h + y0) * w + x0) * c + k0;   /* may lie before x: an index */
        for (int64_t c0 = 0; c0 < kc; c0 += VL) {
            const int64_t cn = kc - c0 < VL ? kc - c0 : VL;
            vf d[6][6];
            if (inside && cn == VL) {       /* most tiles: no border, whole vectors */
                const float *p = x + corner + c0;
                _Pragma("GCC unroll 6") for (int a = 0; a < 6; a++)
                    _Pragma("GCC unroll 6") for (int b = 0; b < 6; b++) d[a][b] = load(p + (a * w + b) * c, VL);
                tile_input(d, out + c0, plane, VL);
            } else {
                for (int a = 0; a < 6; a++)
                    for (int b = 0; b < 6; b++)
                        d[a][b] = row_in[a] && col_in[b] ? load(x + (corner + (a * w + b) * c + c0), cn) : (vf){0};
                tile_input(d, out + c0, plane, cn);
            }
        }
    }
}

/* mb (36, block, cpad) (+)= vb (36, block, kc) times u's rows for these kc channels (36 points, each
   cin x cpad); block is a multiple of 24, cpad of 16 */
static void block_gemm(const float *vb, int64_t kc, const float *u, int64_t cin, int64_t cpad, int64_t block,
                       float *mb, int accumulate) {
    for (int p = 0; p < 36; p++) {
        const float *vp = vb + p * (block * kc + SKEW), *up = u + p * cin * cpad;
        float *mp = mb + p * (block * cpad + SKEW);
        for (int64_t j0 = 0; j0 < cpad; j0 += 4 * VL) {
            const int64_t nv = (cpad - j0) / VL < 4 ? (cpad - j0) / VL : 4;
            for (int64_t r0 = 0; r0 < block; r0 += ACC / nv) {
                const float *vr = vp + r0 * kc;
                float *mr = mp + r0 * cpad + j0;
                switch (nv) {
                case 1: gemm_1(vr, kc, up + j0, cpad, kc, mr, cpad, accumulate); break;
                case 2: gemm_2(vr, kc, up + j0, cpad, kc, mr, cpad, accumulate); break;
                case 3: gemm_3(vr, kc, up + j0, cpad, kc, mr, cpad, accumulate); break;
                default: gemm_4(vr, kc, up + j0, cpad, kc, mr, cpad, accumulate); break;
                }
            }
        }
    }
}

/* the vector's lanes where mask is set from a, the others from b */
static inline vf select(vi mask, vf a, vf b) {
    return (vf)(((vi)a & mask) | ((vi)b & ~mask));
}

/* e^x per lane (x clamped to [-87, 87]): 2^n e^r with n = x / ln 2 rounded and |r| <= ln 2 / 2, e^r by
   Cephes' degree-7 polynomial for expf (relative error ~1e-7) */
static inline vf vexp(vf x) {
    const vf hi = (vf){0} + 87.f, lo = (vf){0} - 87.f, magic = (vf){0} + 12582912.f;     /* 1.5 * 2^23 */
    x = select(x > hi, hi, select(x < lo, lo, x));
    const vf n = (x * 1.44269504088896341f + magic) - magic;          /* round to nearest */
    const vf r = x - n * 0.693359375f + n * 2.12194440e-4f;
    vf p = (vf){0} + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const vf e_r = p * r * r + r + 1.f;
    const vi two_n = (__builtin_convertvector(n, vi) + 127) << 23;     /* 2^n as a float's bits */
    return e_r * (vf)two_n;
}

static inline vf sigmoid(vf x) {
    return 1.f / (1.f + vexp(-x));
}

enum { ACT_LEAKY = 0, ACT_SILU = 1, ACT_GATE = 2 };

/* mb (36, block, cpad) -> the block's nt tiles of y (n, h, w, c): each tile's A^T m A plus bias (v), then
   by act: ACT_LEAKY, a leaky ReLU with one slope per channel where slope is not NULL (PReLU; LeakyReLU
   and ReLU as constant slopes); ACT_SILU, v sigmoid(v); ACT_GATE (SPAN's), (v + res) (sigmoid(v) - 1/2).
   Zero at rows >= height or columns >= width. Then, with res (n, h, w, c) not NULL and act not ACT_GATE,
   y = res + scale * that. */
static void block_output(const float *mb, int64_t cpad, int64_t block, const float *bias, float *y,
                         const float *res, int64_t h, int64_t w, int64_t c, int64_t height, int64_t width,
                         int act, const float *slope, float scale, int64_t t0, int64_t nt) {
    const int64_t th = h / 4, tw = w / 4, plane = block * cpad + SKEW;
    for (int64_t i = 0; i < nt; i++) {
        const int64_t t = t0 + i, img = t / (th * tw), r = t % (th * tw), y0 = 4 * (r / tw), x0 = 4 * (r % tw);
        for (int64_t c0 = 0; c0 < c; c0 += VL) {
            const int64_t cn = c - c0 < VL ? c - c0 : VL;
            vf half[6][4];                  /* half[a] = A^T of row a of the tile's M, along b */
            _Pragma("GCC unroll 6") for (int a = 0; a < 6; a++) {
                vf z[6];
                _Pragma("GCC unroll 6") for (int b = 0; b < 6; b++)
                    z[b] = load(mb + (a * 6 + b) * plane + i * cpad + c0, VL);
                A_T(z, half[a]);
            }
            const vf b_v = load(bias + c0, cn), s_v = slope ? load(slope + c0, cn) : (vf){0};
            _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) {       /* then along a: output column k */
                vf z[6], o[4];
                _Pragma("GCC unroll 6") for (int a = 0; a < 6; a++) z[a] = half[a][k];
                A_T(z, o);
                _Pragma("GCC unroll 4") for (int q = 0; q < 4; q++) {
                    const int64_t at = ((img * h + y0 + q) * w + x0 + k) * c + c0;
                    vf val = o[q] + b_v;
                    if (act == ACT_SILU)
                        val = val * sigmoid(val);
                    else if (act == ACT_GATE)
                        val = (val + load(res + at, cn)) * (sigmoid(val) - 0.5f);
                    else if (slope)
                        val = select(val < 0.f, val * s_v, val);
                    if (y0 + q >= height || x0 + k >= width) val = (vf){0};
                    if (res && act != ACT_GATE) val = load(res + at, cn) + scale * val;
                    store(y + at, val, cn);
                }
            }
        }
    }
}

/* floats of scratch winograd_conv needs for blocks of this many tiles, cpad output columns, threads */
int64_t winograd_scratch_floats(int64_t block, int64_t cpad, int threads) {
    return (int64_t)threads * 36 * (block * (KC + cpad) + 2 * SKEW);
}

/* One 3x3 convolution (stride 1, zero padding 1) of the concatenation of nsrc maps src[s] (n, h, w,
   cs[s]) into y (n, h, w, c), with u (36, sum of cs, cpad) (weight_transform's; columns past c zero),
   finished as block_output says (act: ACT_LEAKY, ACT_SILU or ACT_GATE). block: tiles per block, a multiple of 24; scratch: as many floats as
   winograd_scratch_floats says. y may not overlap any source: other threads read the sources around
   the tiles this one writes. */
void winograd_conv(const float *const *src, const int64_t *cs, int64_t nsrc, const float *u, int64_t cpad,
                   const float *bias, float *y, const float *res, int64_t n, int64_t h, int64_t w, int64_t c,
                   int64_t height, int64_t width, int act, const float *slope, float scale, float *scratch,
                   int64_t block,
                   int threads) {
    const int64_t tiles = n * (h / 4) * (w / 4), blocks = (tiles + block - 1) / block;
    int64_t cin = 0;
    for (int64_t s = 0; s < nsrc; s++) cin += cs[s];
    #pragma omp parallel num_threads(threads)
    {
        float *vb = scratch + winograd_scratch_floats(block, cpad, omp_get_thread_num());
        float *mb = vb + 36 * (block * KC + SKEW);
        #pragma omp for schedule(static)
        for (int64_t b = 0; b < blocks; b++) {
            const int64_t t0 = b * block, nt = tiles - t0 < block ? tiles - t0 : block;
            int64_t row = 0;        /* u's row of the first channel of this chunk */
            for (int64_t s = 0; s < nsrc; s++)
                for (int64_t k0 = 0; k0 < cs[s]; k0 += KC) {
                    const int64_t kc = cs[s] - k0 < KC ? cs[s] - k0 : KC;
                    block_input(src[s], h, w, cs[s], k0, kc, t0, nt, block, vb);
                    block_gemm(vb, kc, u + row * cpad, cin, cpad, block, mb, row > 0);
                    row += kc;
                }
            block_output(mb, cpad, block, bias, y, res, h, w, c, height, width, act, slope, scale, t0, nt);
        }
    }
}
