/*
 * Fused CPU kernels of the blockwise DSD loss (custom/blockwise_loss.py), built and loaded by custom/native.py.
 *
 * The PyTorch formulation of a block passes over the block's logits once per softmax, exp and elementwise step;
 * here each tile of TILE voxels is read once and every term and gradient of the tile is made while it sits in
 * the core's caches. Compiled once with REAL = float and once with REAL = double (DSD_DOUBLE), so that the
 * float64 equality tests run through the same code as float32 training.
 *
 * Logits are (heads, classes, voxels), classes `voxels` apart. Voxels are split into chunks of a fixed size whose
 * sums are kept apart and added in chunk order, so that the results do not depend on the number of threads.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if DSD_DOUBLE
#define REAL double
#define EXP exp
#define LOG log
#define NAME(name) name##_f64
#else
#define REAL float
#define EXP expf
#define LOG logf
#define NAME(name) name##_f32
#endif

/* Long enough that each of a block's many rows is read in runs that the prefetchers follow: 256 took a block of 8
 * heads in 8.7 ms where 64 took 12.7 ms. */
#define TILE 256

/* log-softmax and softmax over the classes of T voxels of one head, of the logits times `scale`. */
static void NAME(softmax_tile)(const REAL *x, int64_t stride, int classes, int T, REAL scale, REAL *log_p,
                               REAL *p) {
    REAL top[TILE], total[TILE];
    for (int k = 0; k < classes; k++) {
#pragma omp simd
        for (int v = 0; v < T; v++) log_p[k * TILE + v] = x[k * stride + v] * scale;
    }
    for (int v = 0; v < T; v++) top[v] = log_p[v];
    for (int k = 1; k < classes; k++) {
#pragma omp simd
        for (int v = 0; v < T; v++) top[v] = log_p[k * TILE + v] > top[v] ? log_p[k * TILE + v] : top[v];
    }
    for (int v = 0; v < T; v++) total[v] = 0;
    for (int k = 0; k < classes; k++) {
#pragma omp simd
        for (int v = 0; v < T; v++) {
            REAL e = EXP(log_p[k * TILE + v] - top[v]);
            p[k * TILE + v] = e;
            total[v] += e;
        }
    }
#pragma omp simd
    for (int v = 0; v < T; v++) {
        top[v] += LOG(total[v]);
        total[v] = 1 / total[v];
    }
    for (int k = 0; k < classes; k++) {
#pragma omp simd
        for (int v = 0; v < T; v++) {
            log_p[k * TILE + v] -= top[v];
            p[k * TILE + v] *= total[v];
        }
    }
}

/*
 * One block's deep-supervision sums and distillation terms (see _forward in blockwise_loss.py).
 *
 * supervised: stack positions of the n_supervised deep-supervised heads (softmax at temperature 1).
 * group_sizes: teacher + students of each of the n_groups groups, stacked from position 0, teacher first.
 * kl_grad (sum of group_sizes, classes, voxels): each student's q_s - q_t and, with teacher_grad, each teacher's
 *   q_t * (sum_s log q_s - n log q_t) - q_t * kl, the sign of _forward's teacher gradient.
 * Outputs, added over the block: log_p_label[n_supervised] (sum of log p at the label), p_sums and intersections
 * [n_supervised][classes] (sum of p, sum of p at the label by label class), label_counts[classes], and
 * kl[g * kl_stride] (sum over voxels of sum_k q_t (sum_s log q_s - n log q_t), minus the group's KL sum).
 * Returns 0, or 1 when the scratch memory could not be allocated.
 */
int NAME(dsd_block_forward)(const REAL *logits, const int64_t *labels, int64_t voxels, int classes, int n_supervised,
                            const int *supervised, int n_groups, const int *group_sizes, REAL tau, int teacher_grad,
                            REAL *kl_grad, REAL *log_p_label, REAL *p_sums, REAL *intersections, REAL *label_counts,
                            REAL *kl, int64_t kl_stride, int64_t chunk, int threads) {
    const int64_t chunks = (voxels + chunk - 1) / chunk;
    const int64_t width = n_supervised * (1 + 2 * (int64_t)classes) + classes + n_groups;
    int members = 1;
    for (int g = 0; g < n_groups; g++) members = group_sizes[g] > members ? group_sizes[g] : members;
    double *partial = calloc(chunks * width, sizeof(double));
    if (partial == NULL) return 1;
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        REAL *log_q = malloc(sizeof(REAL) * members * classes * TILE);
        REAL *q = malloc(sizeof(REAL) * members * classes * TILE);
        if (log_q == NULL || q == NULL) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t c = 0; c < chunks; c++) {
            if (failed) continue;
            double *sums = partial + c * width;
            double *ce = sums, *p_sum = sums + n_supervised, *inter = p_sum + n_supervised * classes;
            double *counts = inter + n_supervised * classes, *kl_sum = counts + classes;
            const int64_t stop = (c + 1) * chunk < voxels ? (c + 1) * chunk : voxels;
            for (int64_t v0 = c * chunk; v0 < stop; v0 += TILE) {
                const int T = stop - v0 < TILE ? (int)(stop - v0) : TILE;
                const int64_t *label = labels + v0;
                for (int v = 0; v < T; v++) counts[label[v]] += 1;
                for (int r = 0; r < n_supervised; r++) {
                    const REAL *x = logits + (int64_t)supervised[r] * classes * voxels + v0;
                    NAME(softmax_tile)(x, voxels, classes, T, 1, log_q, q);
                    REAL at_label = 0;
                    for (int v = 0; v < T; v++) {
                        const int64_t k = label[v];
                        at_label += log_q[k * TILE + v];
                        inter[r * classes + k] += q[k * TILE + v];
                    }
                    ce[r] += at_label;
                    for (int k = 0; k < classes; k++) {
                        REAL total = 0;
#pragma omp simd reduction(+ : total)
                        for (int v = 0; v < T; v++) total += q[k * TILE + v];
                        p_sum[r * classes + k] += total;
                    }
                }
                int64_t first = 0;
                for (int g = 0; g < n_groups; g++) {
                    const int size = group_sizes[g], students = size - 1;
                    for (int j = 0; j < size; j++) {
                        const REAL *x = logits + (first + j) * classes * voxels + v0;
                        NAME(softmax_tile)(x, voxels, classes, T, 1 / tau, log_q + j * classes * TILE,
                                           q + j * classes * TILE);
                    }
                    REAL kl_voxel[TILE], divergence[TILE];
                    for (int v = 0; v < T; v++) kl_voxel[v] = 0;
                    for (int k = 0; k < classes; k++) {
                        const REAL *q_t = q + k * TILE;
#pragma omp simd
                        for (int v = 0; v < T; v++) divergence[v] = -students * log_q[k * TILE + v];
                        for (int j = 1; j < size; j++) {
                            const REAL *log_q_s = log_q + (j * classes + k) * TILE, *q_s = q + (j * classes + k) * TILE;
                            REAL *grad = kl_grad + ((first + j) * classes + k) * voxels + v0;
#pragma omp simd
                            for (int v = 0; v < T; v++) {
                                divergence[v] += log_q_s[v];
                                grad[v] = q_s[v] - q_t[v];
                            }
                        }
                        REAL *grad = kl_grad + (first * classes + k) * voxels + v0;
#pragma omp simd
                        for (int v = 0; v < T; v++) {
                            const REAL per_class = divergence[v] * q_t[v];
                            kl_voxel[v] += per_class;
                            if (teacher_grad) grad[v] = per_class;
                        }
                    }
                    REAL total = 0;
                    for (int v = 0; v < T; v++) total += kl_voxel[v];
                    kl_sum[g] += total;
                    for (int k = 0; teacher_grad && k < classes; k++) {
                        const REAL *q_t = q + k * TILE;
                        REAL *grad = kl_grad + (first * classes + k) * voxels + v0;
#pragma omp simd
                        for (int v = 0; v < T; v++) grad[v] -= q_t[v] * kl_voxel[v];
                    }
                    first += size;
                }
            }
        }
        free(log_q);
        free(q);
    }
    if (!failed) {
        for (int64_t i = 0; i < width; i++) {
            double total = 0;
            for (int64_t c = 0; c < chunks; c++) total += partial[c * width + i];
            const int64_t sup_k = (int64_t)n_supervised * classes;
            if (i < n_supervised) log_p_label[i] += total;
            else if (i < n_supervised + sup_k) p_sums[i - n_supervised] += total;
            else if (i < n_supervised + 2 * sup_k) intersections[i - n_supervised - sup_k] += total;
            else if (i < n_supervised + 2 * sup_k + classes) label_counts[i - n_supervised - 2 * sup_k] += total;
            else kl[(i - n_supervised - 2 * sup_k - classes) * kl_stride] += total;
        }
    }
    free(partial);
    return failed;
}

/*
 * The deep-supervised heads' logit gradient of one block, written over their logits (rows, classes, voxels):
 * p * (a + c_ce - <a, p>) - c_ce * onehot with a = A * onehot + C (see _backward in blockwise_loss.py).
 * coefficient_a, coefficient_c: (rows, classes). Returns 0, or 1 when the scratch memory could not be allocated.
 */
int NAME(dsd_dice_gradient)(REAL *logits, const int64_t *labels, int64_t voxels, int classes, int rows,
                            const REAL *coefficient_a, const REAL *coefficient_c, REAL ce_scale, int64_t chunk,
                            int threads) {
    const int64_t chunks = (voxels + chunk - 1) / chunk;
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        REAL *log_p = malloc(sizeof(REAL) * classes * TILE);
        REAL *p = malloc(sizeof(REAL) * classes * TILE);
        if (log_p == NULL || p == NULL) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t c = 0; c < chunks; c++) {
            if (failed) continue;
            const int64_t stop = (c + 1) * chunk < voxels ? (c + 1) * chunk : voxels;
            for (int64_t v0 = c * chunk; v0 < stop; v0 += TILE) {
                const int T = stop - v0 < TILE ? (int)(stop - v0) : TILE;
                const int64_t *label = labels + v0;
                for (int r = 0; r < rows; r++) {
                    REAL *x = logits + (int64_t)r * classes * voxels + v0;
                    const REAL *a = coefficient_a + r * classes, *cc = coefficient_c + r * classes;
                    NAME(softmax_tile)(x, voxels, classes, T, 1, log_p, p);
                    REAL at_label[TILE], inner[TILE];
                    for (int v = 0; v < T; v++) {
                        at_label[v] = a[label[v]] * p[label[v] * TILE + v];
                        inner[v] = at_label[v];
                    }
                    for (int k = 0; k < classes; k++) {
#pragma omp simd
                        for (int v = 0; v < T; v++) inner[v] += cc[k] * p[k * TILE + v];
                    }
                    for (int k = 0; k < classes; k++) {
                        const REAL off_label = cc[k] + ce_scale;
#pragma omp simd
                        for (int v = 0; v < T; v++) x[k * voxels + v] = (off_label - inner[v]) * p[k * TILE + v];
                    }
                    for (int v = 0; v < T; v++) x[label[v] * voxels + v] += at_label[v] - ce_scale;
                }
            }
        }
        free(log_p);
        free(p);
    }
    return failed;
}

/*
 * A block's columns of a (channels, voxels) tensor in its natural voxel order: block[c, position[i]] =
 * source[c, natural[i]], with `natural` increasing. A block's voxels lie every few voxels along each axis, and
 * taken in the block's own order they would touch a new cache line per voxel and channel; here each channel's
 * row is read in increasing address order while the block's row of that channel, a few hundred kB, stays in cache.
 */
void NAME(dsd_gather_columns)(const REAL *source, int64_t source_stride, REAL *block, int64_t n, int channels,
                              const int64_t *natural, const int64_t *position, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int c = 0; c < channels; c++) {
        const REAL *row = source + c * source_stride;
        REAL *out = block + c * n;
        for (int64_t i = 0; i < n; i++) out[position[i]] = row[natural[i]];
    }
}

/* The inverse of dsd_gather_columns: target[c, natural[i]] (+)= block[c, position[i]], added when `add` is set. */
void NAME(dsd_scatter_columns)(REAL *target, int64_t target_stride, const REAL *block, int64_t n, int channels,
                               const int64_t *natural, const int64_t *position, int add, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int c = 0; c < channels; c++) {
        REAL *row = target + c * target_stride;
        const REAL *in = block + c * n;
        if (add) {
            for (int64_t i = 0; i < n; i++) row[natural[i]] += in[position[i]];
        } else {
            for (int64_t i = 0; i < n; i++) row[natural[i]] = in[position[i]];
        }
    }
}
