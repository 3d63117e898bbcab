/* CPU kernels for one training step of SPEC §2's VAE, Adam included: everything except the three dense
 * products of the decoder's output layer, which PyTorch's matrix multiply does (mnistgen/kernels/vae.py
 * says how the pieces fit together).
 *
 * Why: at batch 100 the step of a PyTorch loop is five 100 x 784 x 500 products plus many small
 * operations, each one a pass over memory with its own dispatch. Here
 * - the two encoder products that read the images (x W1^T forward, d_a1^T x for W1's gradient) are sums
 *   over the images' nonzero pixels only (13% of them for binary MNIST). The encoder weight is kept
 *   pixel-major, W1^T (D, H), so that a pixel's weights are one contiguous row: no transposes per step;
 * - tanh, the heads, the reparametrization, the decoder's first layer and the whole backward through them
 *   run as a few passes over rows or column blocks, with vector math written out below;
 * - Adam is one pass over one flat buffer of all parameters.
 *
 * The mathematics is the one of mnistgen.accelerate.vae.elbo_with_gradients (which states it); tests compare
 * values and gradients with it and with autograd to float32 rounding. Sums over the batch (parameter
 * gradients) and over a row (dot products, the log-likelihood) run in a fixed order whatever the number of
 * threads, so these kernels' results do not depend on it. (The three products are PyTorch's: on some CPUs MKL
 * splits their sums by thread, and their rounding then depends on torch's thread count.)
 *
 * Vector math: exp, log1p and tanh below are accurate to a few units in the last place of float32
 * (tests check them against float64 on dense ranges of inputs); NaN propagates through all three.
 *
 * Layout (all float32, row-major): x (B, D) images; eps (B, Z) standard normal draws; the parameters and
 * gradients in the VAEBuffers struct below; activations for up to `capacity` rows. The library reports the
 * size and field offsets of its two structs (mnistgen_vae_layout, at the end): the Python side, which mirrors
 * them with ctypes, checks them when it loads the library.
 */

#define _POSIX_C_SOURCE 200809L

#include <math.h>
#include <stddef.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef float vf __attribute__((vector_size(32)));
typedef int vi __attribute__((vector_size(32)));
typedef float vfu __attribute__((vector_size(32), aligned(4))); /* a vf at any float alignment */

#define W 8                /* floats per vector */
#define BLOCK_VECTORS 8    /* a column block: 64 hidden units, 8 vector accumulators */
#define BLOCK (W * BLOCK_VECTORS)

typedef struct {
    long pixels, hidden, latent, capacity; /* D, H, Z, most rows per step */
    /* parameters (pointers into one flat buffer) */
    float *enc_wt;  /* (D, H) encoder hidden weight, transposed: row p = pixel p's weights */
    float *enc_b;   /* (H) */
    float *mean_w;  /* (Z, H) */
    float *mean_b;  /* (Z) */
    float *logvar_w, *logvar_b;
    float *dec_w;   /* (H, Z) decoder hidden weight */
    float *dec_b;   /* (H) */
    float *out_w;   /* (D, H) decoder output weight (only PyTorch's products read it) */
    float *out_b;   /* (D) */
    float *dec_wt;  /* (Z, H) scratch: Wd^T, written by the forward */
    /* their gradients, same shapes (pointers into one flat buffer of the same layout) */
    float *g_enc_wt, *g_enc_b, *g_mean_w, *g_mean_b, *g_logvar_w, *g_logvar_b, *g_dec_w, *g_dec_b;
    float *g_out_b;
    /* activations, (capacity, .) */
    float *h1;       /* (B, H) tanh of the encoder's hidden layer */
    float *mean, *logvar, *std, *z; /* (B, Z) */
    float *h2;       /* (B, H) tanh of the decoder's hidden layer */
    float *logits;   /* (B, D) written by PyTorch's product */
    float *d_logits; /* (B, D) dL/dlogits */
    float *d_h2;     /* (B, H) dL/dh2, written by PyTorch's product; overwritten with dL/da2 */
    float *d_a1;     /* (B, H) dL/da1 */
    float *d_mean, *d_logvar; /* (B, Z) dL/dmean, dL/dlogvar */
    double *row_elbo; /* (B) each image's ELBO estimate */
    /* the nonzero pixels, image by image and pixel by pixel */
    int *image_count;   /* (B) */
    int *image_pixel;   /* (B, D): the first image_count[b] entries of row b */
    float *image_value; /* (B, D) */
    int *pixel_count;   /* (D) */
    int *pixel_image;   /* (D, B): the first pixel_count[p] entries of row p, images ascending */
    float *pixel_value; /* (D, B) */
} VAEBuffers;

/* the scalars of one Adam step (PyTorch's Adam without weight decay): step_size = lr / (1 - beta1^t),
 * bias_correction2_sqrt = sqrt(1 - beta2^t) */
typedef struct {
    float beta1, beta2, step_size, bias_correction2_sqrt, eps;
} AdamStep;

/* Adam on n parameters, in the order of operations of PyTorch's fused CPU kernel:
 * m = m + (1 - beta1) (g - m); v = beta2 v + (1 - beta2) g^2; param -= step_size m / (sqrt(v) / bc2_sqrt + eps) */
static inline void adam_update(float *restrict param, const float *restrict grad, float *restrict m,
                               float *restrict v, long n, const AdamStep *a) {
    float one_minus_beta1 = 1.0f - a->beta1, one_minus_beta2 = 1.0f - a->beta2, beta2 = a->beta2;
    float step_size = a->step_size, bias_correction2_sqrt = a->bias_correction2_sqrt, eps = a->eps;
    for (long i = 0; i < n; i++) {
        float g = grad[i];
        float mi = m[i] + one_minus_beta1 * (g - m[i]);
        float vi_ = v[i] * beta2 + g * g * one_minus_beta2;
        m[i] = mi;
        v[i] = vi_;
        param[i] -= step_size * mi / (sqrtf(vi_) / bias_correction2_sqrt + eps);
    }
}

/* --------------------------------------------------------------------------- vector math */

static inline vf vload(const float *p) { return *(const vfu *)p; }
static inline void vstore(float *p, vf v) { *(vfu *)p = v; }
static inline vf vbroadcast(float a) { return (vf){a, a, a, a, a, a, a, a}; }
static inline vf vselect(vi mask, vf yes, vf no) { return (vf)((mask & (vi)yes) | (~mask & (vi)no)); }
static inline vf vabs(vf a) { return (vf)((vi)a & 0x7fffffff); }
/* max(a, 0) with NaN kept */
static inline vf vrelu(vf a) { return vselect(a < 0.0f, vbroadcast(0.0f), a); }

/* exp(x), for x clamped to [-87.3, 88.3] (outside it the result is the bound's: tiny or huge); NaN -> NaN.
 * x = n ln2 + r, |r| <= ln2 / 2, exp(r) by Cephes' expf polynomial, 2^n by its bits. */
static inline vf v_exp(vf x) {
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer kept in the low bits */
    x = vselect(x < -87.3f, vbroadcast(-87.3f), x);
    x = vselect(x > 88.3f, vbroadcast(88.3f), x);
    vf t = x * 1.44269504088896341f + magic;
    vf n = t - magic;
    vi ni = (vi)t - (vi)vbroadcast(magic);
    vf r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    vf p = vbroadcast(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    vf scale = (vf)((ni + 127) << 23);
    return p * scale;
}

/* log(1 + e) for 0 <= e <= 1: 1 + e = 2^k (1 + f) with 1 + f in [sqrt(1/2), sqrt(2)], then
 * log(1 + f) = 2 atanh(s), s = f / (2 + f), |s| <= 0.172, by its series to s^11. For small e, f = e is
 * exact (1 + e is never rounded). */
static inline vf v_log1p_unit(vf e) {
    vi upper = e > 0.41421356237309515f;
    vf f = vselect(upper, (e - 1.0f) * 0.5f, e);
    vf k = vselect(upper, vbroadcast(0.693147180559945309f), vbroadcast(0.0f));
    vf s = f / (f + 2.0f);
    vf s2 = s * s;
    vf series = vbroadcast(1.0f / 11.0f);
    series = series * s2 + 1.0f / 9.0f;
    series = series * s2 + 1.0f / 7.0f;
    series = series * s2 + 1.0f / 5.0f;
    series = series * s2 + 1.0f / 3.0f;
    series = series * s2 + 1.0f;
    return k + 2.0f * s * series;
}

/* tanh(a): for |a| < 0.5 its Taylor series to a^15; beyond, sign(a) (1 - t) / (1 + t) with t = exp(-2|a|)
 * (no cancellation there: t <= 0.37). */
static inline vf v_tanh(vf a) {
    vf a2 = a * a;
    vf series = vbroadcast(-929569.0f / 638512875.0f);
    series = series * a2 + 21844.0f / 6081075.0f;
    series = series * a2 - 1382.0f / 155925.0f;
    series = series * a2 + 62.0f / 2835.0f;
    series = series * a2 - 17.0f / 315.0f;
    series = series * a2 + 2.0f / 15.0f;
    series = series * a2 - 1.0f / 3.0f;
    vf small = a + a * a2 * series;
    vf magnitude = vabs(a);
    vf t = v_exp(-2.0f * magnitude);
    vf large = (1.0f - t) / (1.0f + t);
    large = (vf)((vi)large | ((vi)a & (int)0x80000000)); /* the sign of a */
    return vselect(magnitude < 0.5f, small, large);
}

/* apply a vector function to n floats in place, the tail through a zero-padded vector */
#define MAP_IN_PLACE(function, data, n)                                   \
    do {                                                                  \
        long i_ = 0;                                                      \
        for (; i_ + W <= (n); i_ += W) vstore((data) + i_, function(vload((data) + i_))); \
        if (i_ < (n)) {                                                   \
            float tail_[W] = {0};                                         \
            memcpy(tail_, (data) + i_, sizeof(float) * (size_t)((n) - i_)); \
            vstore(tail_, function(vload(tail_)));                        \
            memcpy((data) + i_, tail_, sizeof(float) * (size_t)((n) - i_)); \
        }                                                                 \
    } while (0)

/* the thread's share [*first, *last) of `items` items, in contiguous ranges */
static inline void share(long items, long *first, long *last) {
#ifdef _OPENMP
    long thread = omp_get_thread_num(), threads = omp_get_num_threads();
    *first = items * thread / threads;
    *last = items * (thread + 1) / threads;
#else
    *first = 0;
    *last = items;
#endif
}

static inline int thread_number(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static inline int last_thread(void) {
#ifdef _OPENMP
    return omp_get_thread_num() == omp_get_num_threads() - 1;
#else
    return 1;
#endif
}

static inline double dot(const float *a, const float *b, long n) {
    vf sum = vbroadcast(0.0f);
    long i = 0;
    for (; i + W <= n; i += W) sum += vload(a + i) * vload(b + i);
    double total = 0.0;
    for (int lane = 0; lane < W; lane++) total += sum[lane];
    for (; i < n; i++) total += (double)a[i] * b[i];
    return total;
}

/* --------------------------------------------------------------------------- sparse encoder products */

/* image b's nonzero pixels, ascending, and their values: eight pixels are compared at a time, and the
 * nonzero ones found from the comparison's bit mask (all-zero runs, the border and most of the
 * background, cost one test) */
static void list_image(const VAEBuffers *s, const float *x, long b) {
    const vi lane_bit = {1, 2, 4, 8, 16, 32, 64, 128};
    long D = s->pixels, p = 0;
    int *pixel = s->image_pixel + b * D, count = 0;
    float *value = s->image_value + b * D;
    for (; p + W <= D; p += W) {
        vi bits = (vload(x + p) != 0.0f) & lane_bit;
        unsigned mask = (unsigned)(bits[0] | bits[1] | bits[2] | bits[3] | bits[4] | bits[5] | bits[6] | bits[7]);
        while (mask) {
            int lane = __builtin_ctz(mask);
            pixel[count] = (int)(p + lane);
            value[count] = x[p + lane];
            count++;
            mask &= mask - 1;
        }
    }
    for (; p < D; p++)
        if (x[p] != 0.0f) {
            pixel[count] = (int)p;
            value[count] = x[p];
            count++;
        }
    s->image_count[b] = count;
}

/* h1[b, c0:c0+width] = tanh(enc_b + sum over image b's nonzero pixels p of x[b, p] * enc_wt[p, c0:c0+width]),
 * width a multiple of W of at most BLOCK (constant where inlined, so the accumulators stay in registers) */
static inline __attribute__((always_inline)) void encode_block(const VAEBuffers *s, long batch, long c0,
                                                               int vectors) {
    long H = s->hidden, D = s->pixels;
    for (long b = 0; b < batch; b++) {
        vf acc[BLOCK_VECTORS];
        for (int v = 0; v < vectors; v++) acc[v] = vload(s->enc_b + c0 + v * W);
        const int *pixel = s->image_pixel + b * D;
        const float *value = s->image_value + b * D;
        for (int k = 0; k < s->image_count[b]; k++) {
            const float *row = s->enc_wt + pixel[k] * H + c0;
            vf xv = vbroadcast(value[k]);
            for (int v = 0; v < vectors; v++) acc[v] += xv * vload(row + v * W);
        }
        for (int v = 0; v < vectors; v++) vstore(s->h1 + b * H + c0 + v * W, v_tanh(acc[v]));
    }
}

/* g_enc_wt[p, c0:c0+width] = sum over the images b with x[b, p] != 0 (ascending) of x[b, p] * d_a1[b, c0:..] */
static inline __attribute__((always_inline)) void encoder_gradient_block(const VAEBuffers *s, long c0,
                                                                         int vectors) {
    long H = s->hidden, B = s->capacity;
    for (long p = 0; p < s->pixels; p++) {
        vf acc[BLOCK_VECTORS];
        for (int v = 0; v < vectors; v++) acc[v] = vbroadcast(0.0f);
        const int *image = s->pixel_image + p * B;
        const float *value = s->pixel_value + p * B;
        for (int k = 0; k < s->pixel_count[p]; k++) {
            const float *row = s->d_a1 + image[k] * H + c0;
            vf xv = vbroadcast(value[k]);
            for (int v = 0; v < vectors; v++) acc[v] += xv * vload(row + v * W);
        }
        for (int v = 0; v < vectors; v++) vstore(s->g_enc_wt + p * H + c0 + v * W, acc[v]);
    }
}

/* the hidden units H - H % W .. H - 1 that no vector covers, the same sums with one accumulator per unit */
static void encode_tail(const VAEBuffers *s, long batch) {
    long H = s->hidden, D = s->pixels, c0 = H - H % W, units = H % W;
    for (long b = 0; b < batch; b++) {
        float a[W] = {0};
        for (long c = 0; c < units; c++) a[c] = s->enc_b[c0 + c];
        for (int k = 0; k < s->image_count[b]; k++) {
            const float *row = s->enc_wt + s->image_pixel[b * D + k] * H + c0;
            float xv = s->image_value[b * D + k];
            for (long c = 0; c < units; c++) a[c] += xv * row[c];
        }
        MAP_IN_PLACE(v_tanh, a, units);
        memcpy(s->h1 + b * H + c0, a, sizeof(float) * (size_t)units);
    }
}

static void encoder_gradient_tail(const VAEBuffers *s) {
    long H = s->hidden, B = s->capacity, c0 = H - H % W, units = H % W;
    for (long p = 0; p < s->pixels; p++) {
        float acc[W] = {0};
        for (int k = 0; k < s->pixel_count[p]; k++) {
            const float *row = s->d_a1 + s->pixel_image[p * B + k] * H + c0;
            float xv = s->pixel_value[p * B + k];
            for (long c = 0; c < units; c++) acc[c] += xv * row[c];
        }
        memcpy(s->g_enc_wt + p * H + c0, acc, sizeof(float) * (size_t)units);
    }
}

/* Column blocks of the hidden layer: BLOCK units each, the last one shorter; the units past the last full
 * vector form one more job (the tail). */
static long column_jobs(long hidden) { return (hidden / W + BLOCK_VECTORS - 1) / BLOCK_VECTORS + (hidden % W != 0); }

static void column_job(const VAEBuffers *s, long batch, long job, int gradient) {
    long full_vectors = s->hidden / W, c0 = job * BLOCK;
    long block_jobs = (full_vectors + BLOCK_VECTORS - 1) / BLOCK_VECTORS;
    if (job == block_jobs) { /* the tail */
        if (gradient) encoder_gradient_tail(s); else encode_tail(s, batch);
        return;
    }
    long vectors = full_vectors - job * BLOCK_VECTORS;
    switch (vectors < BLOCK_VECTORS ? vectors : BLOCK_VECTORS) { /* a constant width in each case */
#define WIDTH(n) case n: if (gradient) encoder_gradient_block(s, c0, n); else encode_block(s, batch, c0, n); break;
        WIDTH(1) WIDTH(2) WIDTH(3) WIDTH(4) WIDTH(5) WIDTH(6) WIDTH(7) WIDTH(8)
#undef WIDTH
    }
}

/* --------------------------------------------------------------------------- the step */

/* Forward to h2: lists x's nonzero pixels (image by image and pixel by pixel, for the backward), then
 * h1 = tanh(x W1^T + b1), mean and logvar (the heads), std = exp(logvar / 2), z = mean + std eps,
 * h2 = tanh(z Wd^T + bd). */
int mnistgen_vae_forward(const VAEBuffers *s, const float *x, const float *eps, long batch, int threads) {
    if (batch > s->capacity) return -1;
    long D = s->pixels, H = s->hidden, Z = s->latent, B = s->capacity;
    (void)threads;
#pragma omp parallel num_threads(threads)
    {
        long first, last;
        share(batch, &first, &last);
        for (long b = first; b < last; b++) list_image(s, x + b * D, b);
        if (thread_number() == 0) /* Wd^T (Z, H), for vector loops over the hidden units */
            for (long c = 0; c < H; c++)
                for (long j = 0; j < Z; j++) s->dec_wt[j * H + c] = s->dec_w[c * Z + j];
#pragma omp barrier
        share(D, &first, &last);
        for (long p = first; p < last; p++) s->pixel_count[p] = 0;
        for (long b = 0; b < batch; b++) { /* images in order: each pixel's list is ascending */
            const int *pixel = s->image_pixel + b * D;
            int count = s->image_count[b], k = 0;
            while (k < count && pixel[k] < first) k++;
            for (; k < count && pixel[k] < last; k++) {
                int p = pixel[k];
                s->pixel_image[p * B + s->pixel_count[p]] = (int)b;
                s->pixel_value[p * B + s->pixel_count[p]] = s->image_value[b * D + k];
                s->pixel_count[p]++;
            }
        }
#pragma omp barrier
#pragma omp for schedule(dynamic, 1)
        for (long job = 0; job < column_jobs(H); job++) column_job(s, batch, job, 0);
        share(batch, &first, &last);
        for (long b = first; b < last; b++) {
            const float *h1 = s->h1 + b * H;
            for (long j = 0; j < Z; j++) {
                long i = b * Z + j;
                s->mean[i] = s->mean_b[j] + (float)dot(h1, s->mean_w + j * H, H);
                s->logvar[i] = s->logvar_b[j] + (float)dot(h1, s->logvar_w + j * H, H);
                s->std[i] = expf(0.5f * s->logvar[i]);
                s->z[i] = s->mean[i] + s->std[i] * eps[i];
            }
            float *h2 = s->h2 + b * H;
            long c = 0;
            for (; c + W <= H; c += W) {
                vf a = vload(s->dec_b + c);
                for (long j = 0; j < Z; j++) a += s->z[b * Z + j] * vload(s->dec_wt + j * H + c);
                vstore(h2 + c, a);
            }
            for (; c < H; c++) {
                float a = s->dec_b[c];
                for (long j = 0; j < Z; j++) a += s->z[b * Z + j] * s->dec_wt[j * H + c];
                h2[c] = a;
            }
            MAP_IN_PLACE(v_tanh, h2, H);
        }
    }
    return 0;
}

/* With logits = h2 Wo^T + bo given: each image's log p(x|z) = sum_d x l - softplus(l) (into row_elbo),
 * d_logits = scale (sigmoid(l) - x), and its column sums, the output bias's gradient. */
int mnistgen_vae_output(const VAEBuffers *s, const float *x, long batch, float scale, int threads) {
    long D = s->pixels;
    (void)threads;
#pragma omp parallel num_threads(threads)
    {
        long first, last;
        share(batch, &first, &last);
        for (long b = first; b < last; b++) {
            const float *l = s->logits + b * D, *xb = x + b * D;
            float *d = s->d_logits + b * D;
            vf sum = vbroadcast(0.0f);
            long i = 0;
            for (; i + W <= D; i += W) {
                vf lv = vload(l + i), xv = vload(xb + i);
                vf e = v_exp(-vabs(lv));                 /* exp(-|l|) in (0, 1] */
                sum += xv * lv - vrelu(lv) - v_log1p_unit(e);
                vf sigmoid = vselect(lv < 0.0f, e / (1.0f + e), 1.0f / (1.0f + e));
                vstore(d + i, (sigmoid - xv) * scale);
            }
            double total = 0.0;
            for (int lane = 0; lane < W; lane++) total += sum[lane];
            if (i < D) { /* the last D % 8 pixels, through one zero-padded vector */
                float lt[W] = {0}, xt[W] = {0};
                long n = D - i;
                memcpy(lt, l + i, sizeof(float) * (size_t)n);
                memcpy(xt, xb + i, sizeof(float) * (size_t)n);
                vf lv = vload(lt), xv = vload(xt);
                vf e = v_exp(-vabs(lv));
                vf term = xv * lv - vrelu(lv) - v_log1p_unit(e);
                vf sigmoid = vselect(lv < 0.0f, e / (1.0f + e), 1.0f / (1.0f + e));
                vf grad = (sigmoid - xv) * scale;
                for (long k = 0; k < n; k++) { total += term[k]; d[i + k] = grad[k]; }
            }
            s->row_elbo[b] = total;
        }
#pragma omp barrier
        share(D, &first, &last);
        for (long i = first; i < last; i++) s->g_out_b[i] = 0.0f;
        for (long b = 0; b < batch; b++)
            for (long i = first; i < last; i++) s->g_out_b[i] += s->d_logits[b * D + i];
    }
    return 0;
}

/* With d_h2 = d_logits Wo given: every remaining gradient (the decoder's hidden layer, the reparametrization
 * and the prior / entropy or KL terms, the heads, the encoder's hidden layer) and *elbo_sum = sum over the
 * images of their ELBO estimates (Eq. 2 with one sample, or Eq. 1 with the closed-form KL if analytic_kl). */
int mnistgen_vae_backward(const VAEBuffers *s, const float *eps, long batch, float scale, int analytic_kl,
                          float *elbo_sum, int threads) {
    long H = s->hidden, Z = s->latent;
    float *d_mean = s->d_mean, *d_logvar = s->d_logvar;
    (void)threads;
#pragma omp parallel num_threads(threads)
    {
        long first, last;
        share(batch, &first, &last);
        for (long b = first; b < last; b++) { /* row by row: up to dL/da1 */
            float *d_a2 = s->d_h2 + b * H;
            const float *h2 = s->h2 + b * H;
            long c = 0;
            for (; c + W <= H; c += W) {
                vf h = vload(h2 + c);
                vstore(d_a2 + c, vload(d_a2 + c) * (1.0f - h * h));
            }
            for (; c < H; c++) d_a2[c] *= 1.0f - h2[c] * h2[c];
            double prior_terms = 0.0;
            for (long j = 0; j < Z; j++) {
                long i = b * Z + j;
                float d_z = (float)dot(d_a2, s->dec_wt + j * H, H);
                float mean = s->mean[i], logvar = s->logvar[i], std = s->std[i], z = s->z[i];
                if (analytic_kl) {
                    d_mean[i] = d_z + scale * mean;
                    d_logvar[i] = 0.5f * d_z * std * eps[i] + 0.5f * scale * (expf(logvar) - 1.0f);
                    prior_terms -= 0.5 * ((double)mean * mean + exp((double)logvar) - logvar - 1.0);
                } else {
                    d_z += scale * z;
                    d_mean[i] = d_z;
                    d_logvar[i] = 0.5f * d_z * std * eps[i] - 0.5f * scale;
                    /* log p(z) - log q(z|x); the log 2 pi terms cancel */
                    prior_terms += 0.5 * (-(double)z * z + (double)eps[i] * eps[i] + logvar);
                }
            }
            s->row_elbo[b] += prior_terms;
            float *d_a1 = s->d_a1 + b * H;
            const float *h1 = s->h1 + b * H;
            for (c = 0; c + W <= H; c += W) {
                vf d_h1 = vbroadcast(0.0f);
                for (long j = 0; j < Z; j++)
                    d_h1 += d_mean[b * Z + j] * vload(s->mean_w + j * H + c)
                            + d_logvar[b * Z + j] * vload(s->logvar_w + j * H + c);
                vf h = vload(h1 + c);
                vstore(d_a1 + c, d_h1 * (1.0f - h * h));
            }
            for (; c < H; c++) {
                float d_h1 = 0.0f;
                for (long j = 0; j < Z; j++)
                    d_h1 += d_mean[b * Z + j] * s->mean_w[j * H + c] + d_logvar[b * Z + j] * s->logvar_w[j * H + c];
                d_a1[c] = d_h1 * (1.0f - h1[c] * h1[c]);
            }
        }
#pragma omp barrier
        share(H / W, &first, &last); /* hidden units, a vector at a time: sums over the batch, in order */
        for (long c = first * W; c < last * W; c += W) {
            vf g_dec_b = vbroadcast(0.0f), g_enc_b = vbroadcast(0.0f);
            for (long b = 0; b < batch; b++) {
                g_dec_b += vload(s->d_h2 + b * H + c);
                g_enc_b += vload(s->d_a1 + b * H + c);
            }
            vstore(s->g_dec_b + c, g_dec_b);
            vstore(s->g_enc_b + c, g_enc_b);
            for (long j = 0; j < Z; j++) {
                vf g_dec = vbroadcast(0.0f), g_mean = vbroadcast(0.0f), g_logvar = vbroadcast(0.0f);
                for (long b = 0; b < batch; b++) {
                    vf h1 = vload(s->h1 + b * H + c);
                    g_dec += vload(s->d_h2 + b * H + c) * s->z[b * Z + j];
                    g_mean += d_mean[b * Z + j] * h1;
                    g_logvar += d_logvar[b * Z + j] * h1;
                }
                for (int lane = 0; lane < W; lane++) s->g_dec_w[(c + lane) * Z + j] = g_dec[lane];
                vstore(s->g_mean_w + j * H + c, g_mean);
                vstore(s->g_logvar_w + j * H + c, g_logvar);
            }
        }
        if (last_thread())
            for (long c = H - H % W; c < H; c++) { /* the units no vector covers: the same sums */
                float g_dec_b = 0.0f, g_enc_b = 0.0f;
                for (long b = 0; b < batch; b++) {
                    g_dec_b += s->d_h2[b * H + c];
                    g_enc_b += s->d_a1[b * H + c];
                }
                s->g_dec_b[c] = g_dec_b;
                s->g_enc_b[c] = g_enc_b;
                for (long j = 0; j < Z; j++) {
                    float g_dec = 0.0f, g_mean = 0.0f, g_logvar = 0.0f;
                    for (long b = 0; b < batch; b++) {
                        g_dec += s->d_h2[b * H + c] * s->z[b * Z + j];
                        g_mean += d_mean[b * Z + j] * s->h1[b * H + c];
                        g_logvar += d_logvar[b * Z + j] * s->h1[b * H + c];
                    }
                    s->g_dec_w[c * Z + j] = g_dec;
                    s->g_mean_w[j * H + c] = g_mean;
                    s->g_logvar_w[j * H + c] = g_logvar;
                }
            }
#pragma omp for schedule(dynamic, 1)
        for (long job = 0; job < column_jobs(H); job++) column_job(s, batch, job, 1);
    }
    double total = 0.0;
    for (long j = 0; j < Z; j++) {
        float g_mean = 0.0f, g_logvar = 0.0f;
        for (long b = 0; b < batch; b++) {
            g_mean += d_mean[b * Z + j];
            g_logvar += d_logvar[b * Z + j];
        }
        s->g_mean_b[j] = g_mean;
        s->g_logvar_b[j] = g_logvar;
    }
    for (long b = 0; b < batch; b++) total += s->row_elbo[b];
    *elbo_sum = (float)total;
    return 0;
}

/* One Adam step (adam_update) over n parameters, split over the threads */
void mnistgen_adam(float *param, const float *grad, float *m, float *v, long n, const AdamStep *adam, int threads) {
    (void)threads;
#pragma omp parallel num_threads(threads)
    {
        long first, last;
        share(n, &first, &last);
        adam_update(param + first, grad + first, m + first, v + first, last - first, adam);
    }
}

/* The vector functions above, for tests: out[i] = f(in[i]) with f = exp (function 0), log1p on [0, 1]
 * (function 1) or tanh (function 2). Returns -1 for another function number. */
int mnistgen_vae_math(int function, const float *in, float *out, long n) {
    if (function < 0 || function > 2) return -1;
    memcpy(out, in, sizeof(float) * (size_t)n);
    if (function == 0) MAP_IN_PLACE(v_exp, out, n);
    if (function == 1) MAP_IN_PLACE(v_log1p_unit, out, n);
    if (function == 2) MAP_IN_PLACE(v_tanh, out, n);
    return 0;
}

/* --------------------------------------------------------------------------- layout */

/* The structs' layout as this compiler laid them out: mnistgen/kernels/vae.py mirrors VAEBuffers and AdamStep
 * field for field with ctypes, and mnistgen/kernels/native.py refuses a library whose sizes and offsets are not
 * those of the mirror (a field added, removed, moved or of another size on one side only). */
typedef struct {
    const char *name;
    long value;
} LayoutEntry;

#define SIZE(type) {"sizeof(" #type ")", (long)sizeof(type)}
#define FIELD(type, field) {"offsetof(" #type ", " #field ")", (long)offsetof(type, field)}

static const LayoutEntry LAYOUT[] = {
    SIZE(VAEBuffers),
    FIELD(VAEBuffers, pixels), FIELD(VAEBuffers, hidden), FIELD(VAEBuffers, latent), FIELD(VAEBuffers, capacity),
    FIELD(VAEBuffers, enc_wt), FIELD(VAEBuffers, enc_b), FIELD(VAEBuffers, mean_w), FIELD(VAEBuffers, mean_b),
    FIELD(VAEBuffers, logvar_w), FIELD(VAEBuffers, logvar_b), FIELD(VAEBuffers, dec_w), FIELD(VAEBuffers, dec_b),
    FIELD(VAEBuffers, out_w), FIELD(VAEBuffers, out_b), FIELD(VAEBuffers, dec_wt), FIELD(VAEBuffers, g_enc_wt),
    FIELD(VAEBuffers, g_enc_b), FIELD(VAEBuffers, g_mean_w), FIELD(VAEBuffers, g_mean_b),
    FIELD(VAEBuffers, g_logvar_w), FIELD(VAEBuffers, g_logvar_b), FIELD(VAEBuffers, g_dec_w),
    FIELD(VAEBuffers, g_dec_b), FIELD(VAEBuffers, g_out_b), FIELD(VAEBuffers, h1), FIELD(VAEBuffers, mean),
    FIELD(VAEBuffers, logvar), FIELD(VAEBuffers, std), FIELD(VAEBuffers, z), FIELD(VAEBuffers, h2),
    FIELD(VAEBuffers, logits), FIELD(VAEBuffers, d_logits), FIELD(VAEBuffers, d_h2), FIELD(VAEBuffers, d_a1),
    FIELD(VAEBuffers, d_mean), FIELD(VAEBuffers, d_logvar), FIELD(VAEBuffers, row_elbo),
    FIELD(VAEBuffers, image_count), FIELD(VAEBuffers, image_pixel), FIELD(VAEBuffers, image_value),
    FIELD(VAEBuffers, pixel_count), FIELD(VAEBuffers, pixel_image), FIELD(VAEBuffers, pixel_value),
    SIZE(AdamStep),
    FIELD(AdamStep, beta1), FIELD(AdamStep, beta2), FIELD(AdamStep, step_size),
    FIELD(AdamStep, bias_correction2_sqrt), FIELD(AdamStep, eps),
};

/* Entry `index` of LAYOUT: *name and *value. Returns 0, or -1 past the last entry. */
int mnistgen_vae_layout(int index, const char **name, long *value) {
    if (index < 0 || index >= (int)(sizeof LAYOUT / sizeof LAYOUT[0])) return -1;
    *name = LAYOUT[index].name;
    *value = LAYOUT[index].value;
    return 0;
}
