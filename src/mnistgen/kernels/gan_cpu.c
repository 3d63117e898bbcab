/* CPU kernels for SPEC §3's GAN: the discriminator D, forward and backward, and the generator G from its
 * first LeakyReLU to before its sigmoid (both upsample-convolutions, the LeakyReLUs, conv3), forward and
 * backward.
 *
 * D's layers have 1 to 8 channels, too few for a library's convolution kernels to fill a vector register
 * with channels (or with output pixels, at 5x5 to 28x28). Here the vector lanes hold LANES *images*
 * instead (8 with AVX2, 16 with AVX-512): every multiply-add, maximum and comparison of D is the same for
 * all lanes, so the whole network is straight-line vector code with no remainders, and one group's
 * activations (130 or 260 KiB) stay in the core's cache from the first convolution to the last gradient.
 * In G the lanes hold channels of one image (G has 32, 16, 8 and 1 of them).
 *
 * D's layout: images (count, 28, 28) floats, which D takes in groups of LANES (the last one zero-padded),
 * lane = image within the group. D's parameters: one vector of 593 floats in the order of Discriminator.parameters() (conv1
 * weight (2,1,3,3), conv1 bias, conv2 weight (4,2,3,3), conv2 bias, conv3 weight (8,4,3,3), conv3 bias,
 * linear weight (1,200) over the (8,5,5) features flattened channel-first, linear bias).
 *
 * The mathematics is the networks', layer for layer (mnistgen/kernels/gan.py says how they are used;
 * tests/test_native_kernels.py checks values and gradients against torch to float32 rounding): zero-padded
 * 3x3 cross-correlations; ReLU; 2x2 max-pooling whose gradient goes to the first maximum of each window in
 * row-major order (PyTorch's rule, ties included); ReLU's gradient passes where the pre-activation is > 0,
 * LeakyReLU's slope applies where it is not.
 *
 * D's backward recomputes the forward of its group (cheap: nothing is kept between the calls); G's backward
 * reads conv2's output u, which its forward kept.
 * Parameter gradients are summed per group or image, and those sums are added in order by the calling
 * thread: the result does not depend on the number of threads.
 *
 * Threads: each call splits its groups or images over `threads` OpenMP threads (see run_jobs), each with its own
 * work area (Work, GWork). Its arrays' zero borders are set once, when the area is allocated: the code below writes
 * only their insides.
 *
 * The library reports these sizes (parameter counts, offsets, per-image sizes) through mnistgen_gan_layout, at
 * the end: the Python side checks them when it loads the library, and checks every buffer before each call.
 */

#define _POSIX_C_SOURCE 200809L

#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* The vector registers' width: 16 floats where the compiler may use AVX-512, else 8 (AVX2, or other processors'
 * vectors, which the compiler splits or joins as they come) */
#ifdef __AVX512F__
#define LANES 16
#else
#define LANES 8
#endif
typedef float vf __attribute__((vector_size(LANES * 4)));               /* the same value of LANES images */
typedef int vi __attribute__((vector_size(LANES * 4)));
typedef float vfu __attribute__((vector_size(LANES * 4), aligned(4)));  /* the same, at any float alignment */

#define NPARAM 593
/* offsets in the parameter vector */
#define W1 0
#define B1 18
#define W2 20
#define B2 92
#define W3 96
#define B3 384
#define WL 392
#define BL 592

typedef struct {
    vf x[30][30];        /* input, zero border */
    vf a1[2][28][28];    /* conv1 pre-activation */
    vf p1[2][16][16];    /* relu + pool1, zero border */
    vf a2[4][14][14];    /* conv2 pre-activation */
    vf p2[4][7][7];      /* relu + pool2 */
    vf a3[8][5][5];      /* conv3 pre-activation */
    /* gradients; the ga* have a zero border of 2 so that the convolutions' input gradients are gathers with
     * each sum kept in a register */
    vf ga1[2][32][32];   /* d/d a1 at [2 + y][2 + x] */
    vf gp1[2][14][14];
    vf ga2[4][18][18];   /* d/d a2 at [2 + y][2 + x] */
    vf gp2[4][7][7];
    vf ga3[8][9][9];     /* d/d a3 at [2 + y][2 + x] */
    vf gparam[NPARAM];
    vf gx[28][28];       /* d/d x */
} Work;

static inline vf splat(float value) { return (vf){0} + value; }

/* max(a, b) as PyTorch's max-pool and ReLU take it: NaN wins (a NaN pixel makes D's logit NaN, for the guard) */
static inline vf vmax(vf a, vf b) {
    vi take_a = (a > b) | (a != a);
    return (vf)(((vi)a & take_a) | ((vi)b & ~take_a));
}

/* value where mask is set, else 0 */
static inline vf where(vi mask, vf value) { return (vf)((vi)value & mask); }

static inline float lane_sum(vf v) {
    float total = 0.0f;
    for (int lane = 0; lane < LANES; lane++) total += v[lane];
    return total;
}

/* Lane shuffles (GCC's __builtin_shuffle of two vectors: lane LANES + c is lane c of the second one); the
 * masks are EACH_LANE(F, s), lane c of the result taking lane F(s, c) */
#if LANES == 16
#define EACH_LANE(F, s)                                                                                              \
    ((vi){F(s, 0), F(s, 1), F(s, 2), F(s, 3), F(s, 4), F(s, 5), F(s, 6), F(s, 7), F(s, 8), F(s, 9), F(s, 10),          \
          F(s, 11), F(s, 12), F(s, 13), F(s, 14), F(s, 15)})
#else
#define EACH_LANE(F, s) ((vi){F(s, 0), F(s, 1), F(s, 2), F(s, 3), F(s, 4), F(s, 5), F(s, 6), F(s, 7)})
#endif

/* m[r][c] -> m[c][r], LANES x LANES: the off-diagonal blocks of LANES / 2, ..., 2, 1 exchanged in turn */
#define SWAP_LOW(s, c) (((c) & (s)) ? LANES + (c) - (s) : (c))
#define SWAP_HIGH(s, c) (((c) & (s)) ? LANES + (c) : (c) + (s))
#define EXCHANGE(m, s)                                                                                               \
    for (int r = 0; r < LANES; r++)                                                                                  \
        if (!(r & (s))) {                                                                                            \
            vf low = __builtin_shuffle(m[r], m[r + (s)], EACH_LANE(SWAP_LOW, s));                                    \
            m[r + (s)] = __builtin_shuffle(m[r], m[r + (s)], EACH_LANE(SWAP_HIGH, s));                               \
            m[r] = low;                                                                                              \
        }

static inline void transpose(vf m[LANES]) {
#if LANES == 16
    EXCHANGE(m, 8)
#endif
    EXCHANGE(m, 4)
    EXCHANGE(m, 2)
    EXCHANGE(m, 1)
}

/* The LANES sums of 8 lanes each of v[0], ..., v[7] in that order: a tree of shuffles and adds, lane r of each
 * level adding lanes LOW(g, r) and LOW(g, r) + g / 2 of the pair's sums of g lanes */
#define LOW(g, r) ((r) / ((g) / 2) * (g) + (r) % ((g) / 2))
#define HIGH(g, r) (LOW(g, r) + (g) / 2)
#define PAIR_SUM(a, b, g) (__builtin_shuffle(a, b, EACH_LANE(LOW, g)) + __builtin_shuffle(a, b, EACH_LANE(HIGH, g)))

static inline vf sums_of_eights(const vf v[8]) {
    vf fours[4], twos[2];
    for (int k = 0; k < 4; k++) fours[k] = PAIR_SUM(v[2 * k], v[2 * k + 1], 8);
    for (int k = 0; k < 2; k++) twos[k] = PAIR_SUM(fours[2 * k], fours[2 * k + 1], 4);
    return PAIR_SUM(twos[0], twos[1], 2);
}

/* D's logits of a group of count <= LANES images (28, 28) into logits, if not NULL */
static void forward_group(Work *w, const float *images, int count, const float *P, float *logits) {
    for (int p0 = 0; p0 < 28 * 28; p0 += LANES) {  /* LANES pixels of each image, transposed: of each pixel */
        vf m[LANES];
        for (int lane = 0; lane < LANES; lane++)
            m[lane] = lane < count ? *(const vfu *)(images + lane * 28 * 28 + p0) : splat(0.0f);
        transpose(m);
        for (int k = 0; k < LANES; k++) w->x[(p0 + k) / 28 + 1][(p0 + k) % 28 + 1] = m[k];
    }

    /* conv1: 1 -> 2 channels, 3x3, padding 1: (28, 28) -> (2, 28, 28); here and below a row of pixels at a time
     * (independent sums, so that the multiply-adds overlap instead of each waiting for the previous one) */
    for (int c = 0; c < 2; c++) {
        vf k[9];
        for (int t = 0; t < 9; t++) k[t] = splat(P[W1 + c * 9 + t]);
        for (int y = 0; y < 28; y++)
            for (int x0 = 0; x0 < 28; x0 += 14) {
                vf acc[14];
                for (int x = 0; x < 14; x++) acc[x] = splat(P[B1 + c]);
                for (int dy = 0; dy < 3; dy++)
                    for (int dx = 0; dx < 3; dx++)
                        for (int x = 0; x < 14; x++) acc[x] += k[dy * 3 + dx] * w->x[y + dy][x0 + x + dx];
                for (int x = 0; x < 14; x++) w->a1[c][y][x0 + x] = acc[x];
            }
    }
    /* relu, max-pool 2x2: -> (2, 14, 14), stored inside a zero border for conv2 */
    for (int c = 0; c < 2; c++)
        for (int i = 0; i < 14; i++)
            for (int j = 0; j < 14; j++) {
                vf m = vmax(vmax(w->a1[c][2 * i][2 * j], w->a1[c][2 * i][2 * j + 1]),
                            vmax(w->a1[c][2 * i + 1][2 * j], w->a1[c][2 * i + 1][2 * j + 1]));
                w->p1[c][i + 1][j + 1] = vmax(m, splat(0.0f));  /* max of relu = relu of max */
            }
    /* conv2: 2 -> 4 channels, 3x3, padding 1: -> (4, 14, 14) */
    for (int c = 0; c < 4; c++)
        for (int y = 0; y < 14; y++) {
            vf acc[14];
            for (int x = 0; x < 14; x++) acc[x] = splat(P[B2 + c]);
            for (int ci = 0; ci < 2; ci++)
                for (int dy = 0; dy < 3; dy++)
                    for (int dx = 0; dx < 3; dx++)
                        for (int x = 0; x < 14; x++)
                            acc[x] += P[W2 + ((c * 2 + ci) * 3 + dy) * 3 + dx] * w->p1[ci][y + dy][x + dx];
            for (int x = 0; x < 14; x++) w->a2[c][y][x] = acc[x];
        }
    /* relu, max-pool 2x2: -> (4, 7, 7) */
    for (int c = 0; c < 4; c++)
        for (int i = 0; i < 7; i++)
            for (int j = 0; j < 7; j++) {
                vf m = vmax(vmax(w->a2[c][2 * i][2 * j], w->a2[c][2 * i][2 * j + 1]),
                            vmax(w->a2[c][2 * i + 1][2 * j], w->a2[c][2 * i + 1][2 * j + 1]));
                w->p2[c][i][j] = vmax(m, splat(0.0f));
            }
    /* conv3: 4 -> 8 channels, 3x3, no padding: -> (8, 5, 5); relu; linear 200 -> 1 */
    vf logit = splat(P[BL]);
    for (int c = 0; c < 8; c++)
        for (int y = 0; y < 5; y++) {
            vf acc[5];
            for (int x = 0; x < 5; x++) acc[x] = splat(P[B3 + c]);
            for (int ci = 0; ci < 4; ci++)
                for (int dy = 0; dy < 3; dy++)
                    for (int dx = 0; dx < 3; dx++)
                        for (int x = 0; x < 5; x++)
                            acc[x] += P[W3 + ((c * 4 + ci) * 3 + dy) * 3 + dx] * w->p2[ci][y + dy][x + dx];
            for (int x = 0; x < 5; x++) {
                w->a3[c][y][x] = acc[x];
                logit += P[WL + (c * 5 + y) * 5 + x] * vmax(acc[x], splat(0.0f));
            }
        }
    if (logits)
        for (int lane = 0; lane < count; lane++) logits[lane] = logit[lane];
}

/* Gradient of a 2x2 max-pool (of relu(a)) to the first maximum of each window, then through the relu:
 * ga[window position] = gp where that position is the window's first maximum and a > 0, else 0. */
static inline void pool_relu_backward(vf a00, vf a01, vf a10, vf a11, vf pooled, vf gp,
                                      vf *g00, vf *g01, vf *g10, vf *g11) {
    vf zero = splat(0.0f);
    vf r[4] = {vmax(a00, zero), vmax(a01, zero), vmax(a10, zero), vmax(a11, zero)};
    vf a[4] = {a00, a01, a10, a11};
    vf *g[4] = {g00, g01, g10, g11};
    vi taken = (vi){0};
    for (int k = 0; k < 4; k++) {
        vi first = (r[k] == pooled) & ~taken;
        taken |= first;
        *g[k] = where(first & (a[k] > zero), gp);
    }
}

/* A 3x3 convolution's weight and bias gradients for one (output channel, input channel) pair:
 * taps[3 * dy + dx] = sum over output positions (y, x) < (side, side) of gout[y + 2][x + 2] * in[y + dy][x + dx],
 * *bias = sum of gout[y + 2][x + 2]. Pixels outside, taps inside: ten independent sums, so the adds overlap
 * instead of each waiting for the previous one. */
static inline void weight_gradients(int side, int gstride, const vf *gout, int istride, const vf *in, vf taps[9],
                                    vf *bias) {
    vf acc[9], sum = splat(0.0f);
    for (int t = 0; t < 9; t++) acc[t] = splat(0.0f);
    for (int y = 0; y < side; y++)
        for (int x = 0; x < side; x++) {
            vf g = gout[(y + 2) * gstride + x + 2];
            sum += g;
            for (int dy = 0; dy < 3; dy++)
                for (int dx = 0; dx < 3; dx++) acc[dy * 3 + dx] += g * in[(y + dy) * istride + x + dx];
        }
    for (int t = 0; t < 9; t++) taps[t] = acc[t];
    *bias = sum;
}

/* weight_gradients over a layer: cout planes of the output gradient (gstride x gstride each), cin input planes
 * (istride x istride each); writes the (cout, cin, 3, 3) taps and the cout biases */
static void layer_weight_gradients(int cout, int cin, int side, int gstride, const vf *gout, int istride,
                                   const vf *in, vf *taps, vf *bias) {
    for (int c = 0; c < cout; c++)
        for (int ci = 0; ci < cin; ci++)
            weight_gradients(side, gstride, gout + c * gstride * gstride, istride, in + ci * istride * istride,
                             taps + (c * cin + ci) * 9, bias + c);
}

/* pool_relu_backward over a layer: channels planes of pre-activations a (2 side x 2 side), their pooled maxima
 * (side x side inside planes of pooled_stride, at offset pooled_offset), the pooled gradient gp (side x side);
 * writes ga (planes of ga_stride, the (2 side)^2 values at [2 + y][2 + x]). */
static void pool_relu_layer_backward(int channels, int side, const vf *a, const vf *pooled, int pooled_stride,
                                     int pooled_offset, const vf *gp, vf *ga, int ga_stride) {
    int a_side = 2 * side;
    for (int c = 0; c < channels; c++)
        for (int i = 0; i < side; i++)
            for (int j = 0; j < side; j++) {
                const vf *a00 = a + (c * a_side + 2 * i) * a_side + 2 * j;
                vf *g00 = ga + (c * ga_stride + 2 * i + 2) * ga_stride + 2 * j + 2;
                vf max = pooled[(c * pooled_stride + i + pooled_offset) * pooled_stride + j + pooled_offset];
                pool_relu_backward(a00[0], a00[1], a00[a_side], a00[a_side + 1], max, gp[(c * side + i) * side + j],
                                   g00, g00 + 1, g00 + ga_stride, g00 + ga_stride + 1);
            }
}

/* A 3x3 convolution's input gradient as a gather (each sum kept in a register):
 * gin[ci][y][x] = sum over c, dy, dx of weight[c][ci][dy][dx] * gout[c][y + offset - dy][x + offset - dx]
 * for y, x < side, where gout (cout planes of stride x stride) holds the output gradient inside a zero border
 * (offset 2 for a valid convolution stored at [2 + y][2 + x], 3 for padding 1). */
static inline __attribute__((always_inline)) void input_gradient(int cin, int cout, int side, int stride, int offset,
                                                                  const float *weight, const vf *gout, vf *gin) {
    for (int ci = 0; ci < cin; ci++)
        for (int y = 0; y < side; y++) {
            vf acc[14];  /* a row of side <= 14 pixels */
            for (int x = 0; x < side; x++) acc[x] = splat(0.0f);
            for (int c = 0; c < cout; c++)
                for (int dy = 0; dy < 3; dy++)
                    for (int dx = 0; dx < 3; dx++)
                        for (int x = 0; x < side; x++)
                            acc[x] += weight[((c * cin + ci) * 3 + dy) * 3 + dx] *
                                      gout[(c * stride + y + offset - dy) * stride + x + offset - dx];
            for (int x = 0; x < side; x++) gin[(ci * side + y) * side + x] = acc[x];
        }
}

/* Given dL/dlogits of a group of count images: dL/dimages (count, 28, 28) into grad_images and the parameters'
 * gradient into grad_param_group, each if not NULL */
static void backward_group(Work *w, const float *images, int count, const float *P, const float *grad_logits,
                           float *grad_images, float *grad_param_group) {
    forward_group(w, images, count, P, NULL);
    const int want_params = grad_param_group != NULL;
    vf *gP = w->gparam;
    vf zero = splat(0.0f), g = zero;
    for (int lane = 0; lane < count; lane++) g[lane] = grad_logits[lane];

    /* linear and relu3 */
    for (int c = 0; c < 8; c++)
        for (int y = 0; y < 5; y++)
            for (int x = 0; x < 5; x++) {
                int k = (c * 5 + y) * 5 + x;
                vf a = w->a3[c][y][x];
                if (want_params) gP[WL + k] = g * vmax(a, zero);
                w->ga3[c][y + 2][x + 2] = where(a > zero, g * P[WL + k]);
            }
    if (want_params) gP[BL] = g;
    /* conv3 (valid): parameters, then the gradient of p2 as a gather over ga3's zero border */
    if (want_params) layer_weight_gradients(8, 4, 5, 9, &w->ga3[0][0][0], 7, &w->p2[0][0][0], &gP[W3], &gP[B3]);
    input_gradient(4, 8, 7, 9, 2, P + W3, &w->ga3[0][0][0], &w->gp2[0][0][0]);
    /* pool2 and relu2 */
    pool_relu_layer_backward(4, 7, &w->a2[0][0][0], &w->p2[0][0][0], 7, 0, &w->gp2[0][0][0], &w->ga2[0][0][0], 18);
    /* conv2 (padding 1) */
    if (want_params) layer_weight_gradients(4, 2, 14, 18, &w->ga2[0][0][0], 16, &w->p1[0][0][0], &gP[W2], &gP[B2]);
    /* d/d p1[ci][y][x] = sum of w2[c][ci][dy][dx] * ga2[c][y + 1 - dy][x + 1 - dx] (zero outside) */
    input_gradient(2, 4, 14, 18, 3, P + W2, &w->ga2[0][0][0], &w->gp1[0][0][0]);
    /* pool1 and relu1 */
    pool_relu_layer_backward(2, 14, &w->a1[0][0][0], &w->p1[0][0][0], 16, 1, &w->gp1[0][0][0], &w->ga1[0][0][0], 32);
    /* conv1 (padding 1) */
    if (want_params) layer_weight_gradients(2, 1, 28, 32, &w->ga1[0][0][0], 30, &w->x[0][0], &gP[W1], &gP[B1]);
    if (grad_images) {
        vf k[2][9];
        for (int c = 0; c < 2; c++)
            for (int t = 0; t < 9; t++) k[c][t] = splat(P[W1 + c * 9 + t]);
        for (int y = 0; y < 28; y++)
            for (int x0 = 0; x0 < 28; x0 += 14) {
                vf acc[14];
                for (int x = 0; x < 14; x++) acc[x] = zero;
                for (int c = 0; c < 2; c++)
                    for (int dy = 0; dy < 3; dy++)
                        for (int dx = 0; dx < 3; dx++)
                            for (int x = 0; x < 14; x++)
                                acc[x] += k[c][dy * 3 + dx] * w->ga1[c][y + 3 - dy][x0 + x + 3 - dx];
                for (int x = 0; x < 14; x++) w->gx[y][x0 + x] = acc[x];
            }
        for (int p0 = 0; p0 < 28 * 28; p0 += LANES) {  /* LANES pixels, transposed: of each image */
            vf m[LANES];
            for (int p = 0; p < LANES; p++) m[p] = w->gx[(p0 + p) / 28][(p0 + p) % 28];
            transpose(m);
            for (int lane = 0; lane < count; lane++) *(vfu *)(grad_images + lane * 28 * 28 + p0) = m[lane];
        }
    }
    if (want_params)
        for (int k = 0; k < NPARAM; k++) grad_param_group[k] = lane_sum(gP[k]);
}

/* ------------------------------------------------------------------------ G after act1 */

/* G from act1's output to before the sigmoid: s = conv3(act3(conv2(up2(act2(conv1(up1(h0))))))) for h0
 * (images, 1568) = (32, 7, 7) channel-first per image (the Linear's output after act1, viewed), and s
 * (images, 28, 28).
 *
 * Each conv(upsample(.)) is computed in its phase form (mnistgen/kernels/gan.py, phase_kernels): output
 * pixel (2i + a, 2j + b) is a 2x2 convolution of the zero-padded input at rows i + a + dy, columns
 * j + b + dx (dy, dx in {0, 1}) with the kernel K[a][b][dy][dx], whose taps are sums of the 3x3 taps. The
 * caller builds the K from conv1's and conv2's weights (autograd carries K's gradients back to them).
 *
 * Parameters, 10337 floats: K1 (a, b, dy, dx, ci, co) = (2, 2, 2, 2, 32, 16), conv1's bias (16), K2 (2, 2,
 * 2, 2, 16, 8), conv2's bias (8), conv3's weight (1, 8, 3, 3) and bias (1). Lanes: conv1's 16 output
 * channels (HALVES vectors), or, for an input's gradient and K2's, LANES of the input channels; conv2's 8
 * output channels (v8, or with 16 lanes those of two neighbouring pixels), and conv3 sums its 8 input channels
 * across the lanes. The forward keeps conv1's and conv2's outputs for the backward. */

#define G_PARAMS 10337
#define G_K1 0
#define G_B1 8192
#define G_K 8208
#define G_B2 10256
#define G_W3 10264
#define G_B3 10336
#define G_IN_FLOATS 1568
#define G_KEPT (28 * 28 * 8 + 14 * 14 * 16)  /* u, then u1 */
#define G_CHUNK 8                          /* images whose parameter gradients are summed together */
#define HALVES (16 / LANES)                /* vectors of 16 channels */
#define BLOCK (LANES / 8) /* sets of sums computed together: two where AVX-512's 32 registers hold them, else one */
#define ALIGNED __attribute__((aligned(64)))

typedef float v8 __attribute__((vector_size(32)));  /* conv2's 8 output channels */
typedef float v8u __attribute__((vector_size(32), aligned(4)));  /* the same, at any float alignment */

/* The kernels rearranged once per call (g_prepare) and read by every thread */
typedef struct {
    float kt[16][8][16] ALIGNED;   /* K2 transposed: [phase and tap][co][ci] */
    float k1t[16][16][32] ALIGNED; /* K1 transposed: [phase and tap][co][ci] */
#if LANES == 16
    vf k2p[16][16]; /* K2 for conv2's forward two pixels at a time: [phase and tap][ci], lane 2 co + p: K2[.][ci][co] */
#endif
} GKernels;

typedef struct {
    float hp0[32][9][9] ALIGNED;     /* h0 with a zero border: [channel][row][column] */
    float (*u1)[14][16];             /* conv1(upsample(h0)) + bias: in the image's kept outputs, or their copy */
    float hp[16][16][16] ALIGNED;    /* act2(u1) with a zero border: [row][column][channel] */
    float hpr[16][16][16] ALIGNED;   /* the same as [row][channel][column] (the forward's, with 16 lanes) */
    v8u (*u)[28];                    /* conv2(upsample(act2(u1))) + bias: the 8 channels; the same */
    v8 h3[30][30] ALIGNED;           /* act3(u), zero border */
    v8 gs[30][30] ALIGNED;           /* gradient of s, zero border, each value in all 8 lanes */
    v8 gu[28][28] ALIGNED;           /* gradient of u */
    v8 gp[2][2][16][16] ALIGNED;     /* the same by phase, zero border: gp[a][b][i + 1][j + 1] = gu[2i + a][2j + b] */
    float gh1[14][14][16] ALIGNED;   /* gradient of act2(u1), then of u1 */
    float gp1[2][2][9][9][16] ALIGNED; /* the gradient of u1 by phase, zero border */
    float partial[G_PARAMS] ALIGNED; /* one image's parameter gradients */
    float kept[G_KEPT] ALIGNED;      /* the backward's copy of the image's kept outputs (one sequential read) */
} GWork;

/* g where u > 0, slope * g elsewhere: leaky(u) = leaky_scale(u, u, slope), and d/du of leaky(u) applied to g */
static inline vf leaky_scale(vf g, vf u, float slope) {
    vi positive = u > splat(0.0f);
    return (vf)(((vi)g & positive) | ((vi)(g * slope) & ~positive));
}

#if LANES == 16
typedef double vd __attribute__((vector_size(64)));

/* p[0], p[1] in every two lanes (their bits moved as one double, never computed with) */
static inline vf pair(const float *p) {
    double both;
    memcpy(&both, p, sizeof both);
    return (vf)(vd){both, both, both, both, both, both, both, both};
}
#endif

static void g_prepare(const float *P, GKernels *kernels) {
    const float *K1 = P + G_K1, *K2 = P + G_K;
    for (int pt = 0; pt < 16; pt++)
        for (int co = 0; co < 16; co++) {
            for (int ci = 0; ci < 32; ci++) kernels->k1t[pt][co][ci] = K1[(pt * 32 + ci) * 16 + co];
            if (co < 8)
                for (int ci = 0; ci < 16; ci++) kernels->kt[pt][co][ci] = K2[(pt * 16 + ci) * 8 + co];
        }
#if LANES == 16
    for (int pt = 0; pt < 16; pt++)
        for (int ci = 0; ci < 16; ci++)
            for (int lane = 0; lane < 16; lane++) kernels->k2p[pt][ci][lane] = K2[(pt * 16 + ci) * 8 + lane / 2];
#endif
}

/* hp0 from h0, and u, u1 in the image's kept outputs (written by the forward, read by the backward) */
static void g_load(GWork *w, const float *h0, const float *kept) {
    for (int c = 0; c < 32; c++)
        for (int y = 0; y < 7; y++) memcpy(&w->hp0[c][y + 1][1], h0 + (c * 7 + y) * 7, 7 * sizeof(float));
    w->u = (v8u(*)[28])kept;
    w->u1 = (float(*)[14][16])(kept + 28 * 28 * 8);
}

/* hp = act2(u1) with a zero border */
static void g_act2(GWork *w, float slope2) {
    for (int y = 0; y < 14; y++)
        for (int x = 0; x < 14; x++)
            for (int h = 0; h < HALVES; h++) {
                vf u1 = *(const vfu *)&w->u1[y][x][h * LANES];
                *(vf *)&w->hp[y + 1][x + 1][h * LANES] = leaky_scale(u1, u1, slope2);
            }
}

/* h3 = act3(u) with a zero border */
static void g_act3(GWork *w, float slope3) {
    for (int y = 0; y < 28; y++)
        for (int x = 0; x < 28; x += LANES / 8) {
            vf u = *(const vfu *)&w->u[y][x];
            *(vfu *)&w->h3[y + 1][x + 1] = leaky_scale(u, u, slope3);
        }
}

/* conv3's kernel with the 8 channels in every 8 lanes: kernel3[tap][lane] = weight[lane % 8][tap] */
static void g_kernel3(const float *P, vf kernel3[9]) {
    for (int t = 0; t < 9; t++)
        for (int lane = 0; lane < LANES; lane++) kernel3[t][lane] = P[G_W3 + lane % 8 * 9 + t];
}

static void g_forward_image(GWork *w, const GKernels *kernels, const float *h0, const float *P, float slope2,
                            float slope3, float *s, float *kept) {
    g_load(w, h0, kept);
    /* conv1(upsample(h0)): (7, 7, 32) -> (14, 14, 16); a row of 7 output pixels of one phase at a time
     * (seven independent sums sharing each load of the kernel), LANES of the 16 channels at a time */
    for (int a = 0; a < 2; a++)
        for (int b0 = 0; b0 < 2; b0 += BLOCK)  /* BLOCK phases b at a time */
            for (int i = 0; i < 7; i++)
                for (int h = 0; h < HALVES; h++) {
                    vf acc[BLOCK][7];
                    for (int b = 0; b < BLOCK; b++)
                        for (int q = 0; q < 7; q++) acc[b][q] = *(const vfu *)(P + G_B1 + h * LANES);
                    for (int dy = 0; dy < 2; dy++)
                        for (int dx = 0; dx < 2; dx++)
                            for (int ci = 0; ci < 32; ci++)
                                for (int b = 0; b < BLOCK; b++) {
                                    const float *row = &w->hp0[ci][i + a + dy][b0 + b + dx];
                                    vf kernel = *(const vfu *)(P + G_K1 + h * LANES + ci * 16 +
                                                               (((a * 2 + b0 + b) * 2 + dy) * 2 + dx) * 32 * 16);
                                    for (int q = 0; q < 7; q++) acc[b][q] += row[q] * kernel;
                                }
                    for (int b = 0; b < BLOCK; b++)
                        for (int q = 0; q < 7; q++) *(vfu *)&w->u1[2 * i + a][2 * q + b0 + b][h * LANES] = acc[b][q];
                }
    /* conv2(upsample(act2(u1))): (14, 14, 16) -> (28, 28, 8), seven output pixels (pairs with 16 lanes) at a time */
#if LANES == 16
    /* act2(u1) into hpr; then the pixels j and j + 1 of a phase's row at once, lane 2 co + p for pixel j + p: the
     * input pixels at columns j + b + dx and j + b + dx + 1 broadcast as one double, times k2p; both phases b */
    for (int y = 0; y < 14; y++) {
        vf row[16];  /* the row's pixels with their borders, [0, x = 0 ... 13, 0], then its channels */
        row[0] = row[15] = splat(0.0f);
        for (int x = 0; x < 14; x++) {
            vf u1 = *(const vfu *)&w->u1[y][x][0];
            row[x + 1] = leaky_scale(u1, u1, slope2);
        }
        transpose(row);
        for (int ci = 0; ci < 16; ci++) *(vf *)&w->hpr[y + 1][ci][0] = row[ci];
    }
    vf bias2;
    for (int lane = 0; lane < 16; lane++) bias2[lane] = P[G_B2 + lane / 2];
    for (int a = 0; a < 2; a++)
        for (int i = 0; i < 14; i++) {
            vf acc[2][7];
            for (int b = 0; b < 2; b++)
                for (int q = 0; q < 7; q++) acc[b][q] = bias2;
            for (int dy = 0; dy < 2; dy++)
                for (int dx = 0; dx < 2; dx++)
                    for (int ci = 0; ci < 16; ci++)
                        for (int b = 0; b < 2; b++) {
                            vf kernel = kernels->k2p[((a * 2 + b) * 2 + dy) * 2 + dx][ci];
                            const float *row = &w->hpr[i + a + dy][ci][b + dx];
                            for (int q = 0; q < 7; q++) acc[b][q] += pair(row + 2 * q) * kernel;
                        }
            for (int b = 0; b < 2; b++)
                for (int q = 0; q < 7; q++) {  /* lanes (pixel, co): the pixels' 8 channels each */
                    vf pixels = __builtin_shuffle(acc[b][q], (vi){0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15});
                    memcpy(&w->u[2 * i + a][4 * q + b], &pixels, sizeof(v8));
                    memcpy(&w->u[2 * i + a][4 * q + 2 + b], (const float *)&pixels + 8, sizeof(v8));
                }
        }
#else
    (void)kernels;
    g_act2(w, slope2);
    const vfu *K = (const vfu *)(P + G_K);
    vf bias2 = *(const vfu *)(P + G_B2);
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 2; b++)
            for (int i = 0; i < 14; i++)
                for (int j0 = 0; j0 < 14; j0 += 7) {
                    vf acc[7];
                    for (int q = 0; q < 7; q++) acc[q] = bias2;
                    for (int dy = 0; dy < 2; dy++)
                        for (int dx = 0; dx < 2; dx++) {
                            const float(*row)[16] = &w->hp[i + a + dy][j0 + b + dx];
                            const vfu *k = K + (((a * 2 + b) * 2 + dy) * 2 + dx) * 16;
                            for (int ci = 0; ci < 16; ci++) {
                                vf kernel = k[ci];
                                for (int q = 0; q < 7; q++) acc[q] += row[q][ci] * kernel;
                            }
                        }
                    for (int q = 0; q < 7; q++) w->u[2 * i + a][2 * (j0 + q) + b] = acc[q];
                }
#endif
    /* act3, then conv3: 8 -> 1 channel, 3x3, padding 1; LANES pixels at a time (in row-major order), each vector
     * holding LANES / 8 neighbouring ones, their 8 channels summed across the lanes at the end */
    g_act3(w, slope3);
    vf kernel3[9];
    g_kernel3(P, kernel3);
    for (int p0 = 0; p0 < 28 * 28; p0 += LANES) {
        vf acc[8];
        for (int k = 0; k < 8; k++) {
            int y = (p0 + k * LANES / 8) / 28, x = (p0 + k * LANES / 8) % 28;
            acc[k] = splat(0.0f);
            for (int dy = 0; dy < 3; dy++)
                for (int dx = 0; dx < 3; dx++) acc[k] += kernel3[dy * 3 + dx] * *(const vfu *)&w->h3[y + dy][x + dx];
        }
        *(vfu *)(s + p0) = splat(P[G_B3]) + sums_of_eights(acc);
    }
}

/* One image's gradients: dL/dh0 into grad_h0 (1568, channel-first), the parameters' into w->partial. */
static void g_backward_image(GWork *w, const GKernels *kernels, const float *h0, const float *kept, const float *P,
                             float slope2, float slope3, const float *grad_s, float *grad_h0) {
    float *partial = w->partial;
    memcpy(w->kept, kept, sizeof w->kept);
    g_load(w, h0, w->kept);
    g_act2(w, slope2);
    g_act3(w, slope3);
    vf kernel3[9], zero = splat(0.0f);
    g_kernel3(P, kernel3);
    /* conv3: its parameters' gradients, and d/d act3(u) -> d/du; LANES / 8 neighbouring pixels at a time */
    for (int y = 0; y < 28; y++)
        for (int x = 0; x < 28; x++) w->gs[y + 1][x + 1] = (v8){0} + grad_s[y * 28 + x];
    vf taps3[9], bias3 = zero, bias2 = zero;  /* pixels outside, taps inside: independent sums */
    for (int t = 0; t < 9; t++) taps3[t] = zero;
    for (int y = 0; y < 28; y++)
        for (int x = 0; x < 28; x += LANES / 8) {
            vf g = *(const vfu *)&w->gs[y + 1][x + 1];
            bias3 += g;
            for (int dy = 0; dy < 3; dy++)
                for (int dx = 0; dx < 3; dx++) taps3[dy * 3 + dx] += g * *(const vfu *)&w->h3[y + dy][x + dx];
        }
    for (int y = 0; y < 28; y++)
        for (int x = 0; x < 28; x += LANES / 8) {
            vf g = zero;
            for (int dy = 0; dy < 3; dy++)
                for (int dx = 0; dx < 3; dx++) g += kernel3[dy * 3 + dx] * *(const vfu *)&w->gs[y + 2 - dy][x + 2 - dx];
            g = leaky_scale(g, *(const vfu *)&w->u[y][x], slope3);
            *(vf *)&w->gu[y][x] = g;
            bias2 += g;
        }
    /* K2's gradient: for each phase and tap, the sum over the output pixels of act2(u1)'s pixel times d/du;
     * LANES input channels times the 8 output channels at a time (eight independent sums sharing each load of
     * act2(u1)'s pixel) */
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 2; b++)
            for (int dy = 0; dy < 2; dy++)
                for (int dx0 = 0; dx0 < 2; dx0 += BLOCK)  /* BLOCK taps dx at a time */
                    for (int ci0 = 0; ci0 < 16; ci0 += LANES) {
                        vf acc[BLOCK][8];
                        for (int dx = 0; dx < BLOCK; dx++)
                            for (int co = 0; co < 8; co++) acc[dx][co] = zero;
                        for (int i = 0; i < 14; i++)
                            for (int j = 0; j < 14; j++) {
                                const float *g = (const float *)&w->gu[2 * i + a][2 * j + b];
                                for (int dx = 0; dx < BLOCK; dx++) {
                                    vf pixel = *(const vf *)&w->hp[i + a + dy][j + b + dx0 + dx][ci0];
                                    for (int co = 0; co < 8; co++) acc[dx][co] += g[co] * pixel;
                                }
                            }
                        for (int dx = 0; dx < BLOCK; dx++) {
                            int pt = ((a * 2 + b) * 2 + dy) * 2 + dx0 + dx;
                            for (int co = 0; co < 8; co++)
                                for (int lane = 0; lane < LANES; lane++)
                                    partial[G_K + (pt * 16 + ci0 + lane) * 8 + co] = acc[dx][co][lane];
                        }
                    }
    partial[G_B3] = bias3[0];
    for (int c = 0; c < 8; c++) {  /* the sums of the LANES / 8 pixels of a vector added */
        partial[G_B2 + c] = bias2[c];
        for (int t = 0; t < 9; t++) partial[G_W3 + c * 9 + t] = taps3[t][c];
        for (int p = 8; p < LANES; p += 8) {
            partial[G_B2 + c] += bias2[p + c];
            for (int t = 0; t < 9; t++) partial[G_W3 + c * 9 + t] += taps3[t][p + c];
        }
    }
    for (int p = 8; p < LANES; p += 8) partial[G_B3] += bias3[p];
    /* d/d act2(u1): input pixel (padded row r, column c) feeds output (2i + a, 2j + b) through tap
     * (dy, dx) = (r - i - a, c - j - b). d/du is regrouped by phase with a zero border (gp), so that pairs
     * (i, j) outside the image read zeros; lanes: LANES of the 16 channels; seven pixels of a row at a time.
     * Then through act2: d/du1. */
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 2; b++)
            for (int i = 0; i < 14; i++)
                for (int j = 0; j < 14; j++) w->gp[a][b][i + 1][j + 1] = w->gu[2 * i + a][2 * j + b];
    for (int r = 1; r <= 14; r++)
        for (int c0 = 1; c0 <= 14; c0 += 7 * BLOCK)
            for (int h = 0; h < HALVES; h++) {
                vf acc[7 * BLOCK];
                for (int q = 0; q < 7 * BLOCK; q++) acc[q] = zero;
                for (int a = 0; a < 2; a++)
                    for (int b = 0; b < 2; b++)
                        for (int dy = 0; dy < 2; dy++)
                            for (int dx = 0; dx < 2; dx++) {
                                /* gp index of pair (i, j) = (r - a - dy, c - b - dx) is that + 1 */
                                const v8 *g = &w->gp[a][b][r - a - dy + 1][c0 - b - dx + 1];
                                const float *k = &kernels->kt[((a * 2 + b) * 2 + dy) * 2 + dx][0][h * LANES];
                                for (int co = 0; co < 8; co++) {
                                    vf kernel = *(const vf *)(k + co * 16);
                                    for (int q = 0; q < 7 * BLOCK; q++) acc[q] += g[q][co] * kernel;
                                }
                            }
                for (int q = 0; q < 7 * BLOCK; q++) {
                    float *gh1 = &w->gh1[r - 1][c0 + q - 1][h * LANES];
                    *(vf *)gh1 = leaky_scale(acc[q], *(const vfu *)&w->u1[r - 1][c0 + q - 1][h * LANES], slope2);
                }
            }
    /* conv1's bias and K1's gradients: sums over the 14x14 output pixels; eight input channels at a time */
    for (int h = 0; h < HALVES; h++) {
        vf bias1 = zero;
        for (int y = 0; y < 14; y++)
            for (int x = 0; x < 14; x++) bias1 += *(const vf *)&w->gh1[y][x][h * LANES];
        *(vfu *)(partial + G_B1 + h * LANES) = bias1;
    }
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 2; b++)
            for (int dy = 0; dy < 2; dy++)
                for (int dx = 0; dx < 2; dx++) {
                    int pt = ((a * 2 + b) * 2 + dy) * 2 + dx;
                    for (int h = 0; h < HALVES; h++)
                        for (int ci0 = 0; ci0 < 32; ci0 += 8 * BLOCK) {
                            vf acc[8 * BLOCK];
                            for (int k = 0; k < 8 * BLOCK; k++) acc[k] = zero;
                            for (int i = 0; i < 7; i++)
                                for (int j = 0; j < 7; j++) {
                                    vf g = *(const vf *)&w->gh1[2 * i + a][2 * j + b][h * LANES];
                                    const float *pixel = &w->hp0[ci0][i + a + dy][j + b + dx];
                                    for (int k = 0; k < 8 * BLOCK; k++) acc[k] += pixel[k * 9 * 9] * g;
                                }
                            for (int k = 0; k < 8 * BLOCK; k++)
                                *(vfu *)(partial + G_K1 + (pt * 32 + ci0 + k) * 16 + h * LANES) = acc[k];
                        }
                }
    /* d/dh0, the same way as d/d act2(u1) above: lanes LANES of the 32 channels, the 7 pixels of a row at once */
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 2; b++)
            for (int i = 0; i < 7; i++)
                for (int j = 0; j < 7; j++) memcpy(w->gp1[a][b][i + 1][j + 1], w->gh1[2 * i + a][2 * j + b], 16 * 4);
    for (int r = 1; r <= 7; r++)
        for (int v0 = 0; v0 < 32 / LANES; v0 += BLOCK) {  /* BLOCK vectors of channels at a time */
            vf acc[BLOCK][7];
            for (int v = 0; v < BLOCK; v++)
                for (int q = 0; q < 7; q++) acc[v][q] = zero;
            for (int a = 0; a < 2; a++)
                for (int b = 0; b < 2; b++)
                    for (int dy = 0; dy < 2; dy++)
                        for (int dx = 0; dx < 2; dx++) {
                            const float(*g)[16] = &w->gp1[a][b][r - a - dy + 1][1 - b - dx + 1];
                            const float *k = &kernels->k1t[((a * 2 + b) * 2 + dy) * 2 + dx][0][v0 * LANES];
                            for (int co = 0; co < 16; co++)
                                for (int v = 0; v < BLOCK; v++) {
                                    vf kernel = *(const vf *)(k + co * 32 + v * LANES);
                                    for (int q = 0; q < 7; q++) acc[v][q] += g[q][co] * kernel;
                                }
                        }
            for (int v = 0; v < BLOCK; v++)
                for (int q = 0; q < 7; q++)
                    for (int lane = 0; lane < LANES; lane++)
                        grad_h0[(((v0 + v) * LANES + lane) * 7 + r - 1) * 7 + q] = acc[v][q][lane];
        }
}

/* A chunk of G_CHUNK images (fewer at the end): their dL/dh0, and their parameter gradients summed in order. */
static void g_backward_chunk(GWork *w, const GKernels *kernels, long first, long count, const float *h0,
                             const float *kept, const float *P, float slope2, float slope3, const float *grad_s,
                             float *grad_h0, float *chunk_sum) {
    for (int k = 0; k < G_PARAMS; k++) chunk_sum[k] = 0.0f;
    for (long image = first; image < first + count; image++) {
        g_backward_image(w, kernels, h0 + image * G_IN_FLOATS, kept + image * G_KEPT, P, slope2, slope3,
                         grad_s + image * 28 * 28, grad_h0 + image * G_IN_FLOATS);
        for (int k = 0; k < G_PARAMS; k++) chunk_sum[k] += w->partial[k];
    }
}

/* ------------------------------------------------------------------------------------------- threads */

enum Kind { D_FORWARD, D_BACKWARD, G_FORWARD, G_BACKWARD };

typedef struct {  /* one call: what to compute for each item (D: a group of LANES images; G: an image, or 8 in the backward) */
    enum Kind kind;
    const float *input, *params, *grad_output;
    float *output, *grad_input, *grad_param_items;
    float *kept;         /* G: conv1's and conv2's outputs, written by the forward, read by the backward */
    float slope2, slope3; /* G: act2's and act3's */
    long images;         /* the number of images (the last group or chunk may be short) */
    const GKernels *kernels; /* G: its kernels rearranged */
} Job;

static void run_item(const Job *job, long item, void *scratch) {
    long first = item * (job->kind == G_BACKWARD ? G_CHUNK : LANES);  /* D's group, G's chunk: the first image */
    long left = job->images - first;
    int count = left < LANES ? (int)left : LANES;
    switch (job->kind) {
    case D_FORWARD:
        forward_group(scratch, job->input + first * 28 * 28, count, job->params, job->output + first);
        break;
    case D_BACKWARD:
        backward_group(scratch, job->input + first * 28 * 28, count, job->params, job->grad_output + first,
                       job->grad_input ? job->grad_input + first * 28 * 28 : NULL,
                       job->grad_param_items ? job->grad_param_items + item * NPARAM : NULL);
        break;
    case G_FORWARD:
        g_forward_image(scratch, job->kernels, job->input + item * G_IN_FLOATS, job->params, job->slope2,
                        job->slope3, job->output + item * 28 * 28, job->kept + item * G_KEPT);
        break;
    case G_BACKWARD:
        g_backward_chunk(scratch, job->kernels, first, left < G_CHUNK ? left : G_CHUNK, job->input, job->kept,
                         job->params, job->slope2, job->slope3, job->grad_output, job->grad_input,
                         job->grad_param_items + item * G_PARAMS);
        break;
    }
}

/* The items split over `threads` OpenMP threads: torch's own OpenMP runtime where the library was linked to
 * it (its idle threads then do this work instead of spinning beside it). Without OpenMP: one thread. */
static int run_jobs(const Job *job, long items, int threads) {
    int failed = 0;
    size_t size = sizeof(Work) > sizeof(GWork) ? sizeof(Work) : sizeof(GWork);
    (void)threads;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        void *scratch = NULL;  /* zeroed: the zero borders of its arrays, which nothing writes */
        if (posix_memalign(&scratch, 64, size) != 0)
            scratch = NULL;
        else
            memset(scratch, 0, size);
#pragma omp for schedule(static)
        for (long item = 0; item < items; item++) {
            if (scratch)
                run_item(job, item, scratch);
            else
                failed = 1;
        }
        free(scratch);
    }
    return failed ? -1 : 0;
}

/* run_jobs for G, with its kernels rearranged once for all threads */
static int run_g_job(Job *job, long items, int threads) {
    GKernels *kernels = NULL;
    if (posix_memalign((void **)&kernels, 64, sizeof *kernels) != 0) return -1;
    g_prepare(job->params, kernels);
    job->kernels = kernels;
    int status = run_jobs(job, items, threads);
    free(kernels);
    return status;
}

/* total[k] = sum over items of partial[item][k], items in order: independent of the number of threads (the
 * threads split the k, not the items) */
static void sum_items(float *total, const float *partial, long items, int width, int threads) {
    (void)threads;
#pragma omp parallel num_threads(threads)
    {
        int first = 0, last = width;
#ifdef _OPENMP
        first = (int)((long)width * omp_get_thread_num() / omp_get_num_threads());
        last = (int)((long)width * (omp_get_thread_num() + 1) / omp_get_num_threads());
#endif
        for (int k = first; k < last; k++) total[k] = 0.0f;
        for (long item = 0; item < items; item++)
            for (int k = first; k < last; k++) total[k] += partial[item * width + k];
    }
}

/* D's logits (images) of images (images, 28, 28). Returns 0, or -1 if memory ran out. */
int mnistgen_d_forward(const float *images, const float *params, float *logits, long count, int threads) {
    Job job = {D_FORWARD, images, params, NULL, logits, NULL, NULL, NULL, 0.0f, 0.0f, count, NULL};
    return run_jobs(&job, (count + LANES - 1) / LANES, threads);
}

/* Given dL/dlogits (images): dL/dimages (images, 28, 28) if grad_images is not NULL, and dL/dparams (593) if
 * grad_params is not NULL. Returns 0, or -1 if memory ran out. */
int mnistgen_d_backward(const float *images, const float *params, const float *grad_logits, float *grad_images,
                        float *grad_params, long count, int threads) {
    long groups = (count + LANES - 1) / LANES;
    float *sums = grad_params ? malloc(sizeof(float) * NPARAM * (groups ? groups : 1)) : NULL;  /* the groups' */
    Job job = {D_BACKWARD, images, params, grad_logits, NULL, grad_images, sums, NULL, 0.0f, 0.0f, count, NULL};
    int status = grad_params && !sums ? -1 : run_jobs(&job, groups, threads);
    if (status == 0 && grad_params) sum_items(grad_params, sums, groups, NPARAM, threads);
    free(sums);
    return status;
}

/* G after act1: s (images, 28, 28) for h0 (images, 1568); kept (images, 9408) receives conv1's and conv2's
 * outputs for the backward. */
int mnistgen_g_forward(const float *h0, const float *params, float slope2, float slope3, float *s, float *kept,
                       long images, int threads) {
    Job job = {G_FORWARD, h0, params, NULL, s, NULL, NULL, kept, slope2, slope3, images, NULL};
    return run_g_job(&job, images, threads);
}

/* Given dL/ds and the forward's kept outputs: dL/dh0 (images, 1568) and dL/dparams (10337; scratch:
 * ceil(images / 8) * 10337 floats, for the chunks' sums). */
int mnistgen_g_backward(const float *h0, const float *kept, const float *params, float slope2, float slope3,
                        const float *grad_s, float *grad_h0, float *grad_params, float *scratch, long images,
                        int threads) {
    long chunks = (images + G_CHUNK - 1) / G_CHUNK;
    Job job = {G_BACKWARD, h0, params, grad_s, NULL, grad_h0, scratch, (float *)kept, slope2, slope3, images, NULL};
    if (run_g_job(&job, chunks, threads) != 0) return -1;
    sum_items(grad_params, scratch, chunks, G_PARAMS, threads);
    return 0;
}

/* ------------------------------------------------------------------------------------------- layout */

/* The sizes above as the library reports them: mnistgen/kernels/native.py reads this table when it loads the
 * library and refuses a library whose table is not the one mnistgen/kernels/gan.py declares. A piece of a
 * parameter vector is two entries, NAME.offset and NAME.length; the length is the product of the shape the
 * loops above read the piece with. */
typedef struct {
    const char *name;
    long value;
} LayoutEntry;

#define PIECE(name, offset, length) {name ".offset", offset}, {name ".length", length}

static const LayoutEntry LAYOUT[] = {
    {"lanes", LANES},
    {"pixels", 28 * 28},                       /* one image: D's input, G's output */
    {"d.parameters", NPARAM},                  /* in Discriminator.parameters() order: */
    PIECE("d.conv1.weight", W1, 2 * 1 * 3 * 3),
    PIECE("d.conv1.bias", B1, 2),
    PIECE("d.conv2.weight", W2, 4 * 2 * 3 * 3),
    PIECE("d.conv2.bias", B2, 4),
    PIECE("d.conv3.weight", W3, 8 * 4 * 3 * 3),
    PIECE("d.conv3.bias", B3, 8),
    PIECE("d.linear.weight", WL, 1 * 8 * 5 * 5),
    PIECE("d.linear.bias", BL, 1),
    {"g.parameters", G_PARAMS},
    PIECE("g.conv1.phase_kernels", G_K1, 2 * 2 * 2 * 2 * 32 * 16),  /* (a, b, dy, dx, ci, co) */
    PIECE("g.conv1.bias", G_B1, 16),
    PIECE("g.conv2.phase_kernels", G_K, 2 * 2 * 2 * 2 * 16 * 8),
    PIECE("g.conv2.bias", G_B2, 8),
    PIECE("g.conv3.weight", G_W3, 1 * 8 * 3 * 3),
    PIECE("g.conv3.bias", G_B3, 1),
    {"g.input", G_IN_FLOATS},
    {"g.kept", G_KEPT},
    {"g.chunk", G_CHUNK},
};

/* Entry `index` of LAYOUT: *name and *value. Returns 0, or -1 past the last entry. */
int mnistgen_gan_layout(int index, const char **name, long *value) {
    if (index < 0 || index >= (int)(sizeof LAYOUT / sizeof LAYOUT[0])) return -1;
    *name = LAYOUT[index].name;
    *value = LAYOUT[index].value;
    return 0;
}
