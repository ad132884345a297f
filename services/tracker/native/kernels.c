/* The tracker's two per-step hot loops, each one pass over memory instead of a chain of numpy temporaries.
 *
 * Built into a shared library by services/tracker/native/__init__.py (at setup, or on first use when a compiler is
 * present) and called through ctypes. Compiled without fast-math and without FMA contraction, so the score update
 * performs exactly numpy's operations in numpy's order and gives the same numbers bit for bit.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HW_X86 1
#endif

/* ---- fp16 column sums -------------------------------------------------------------------------------------------- */

/* IEEE half -> float for any bit pattern (subnormals, infinities and NaNs included). */
static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    uint32_t bits;
    if (exponent == 0x1fu) {
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else if (exponent != 0) {
        bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {
        bits = sign;
    } else { /* subnormal: value = mantissa * 2^-24, exact in float */
        float value = (float)mantissa * (1.0f / 16777216.0f);
        return sign ? -value : value;
    }
    float out;
    memcpy(&out, &bits, sizeof out);
    return out;
}

static uint16_t colsum_scalar(const uint16_t *x, size_t rows, size_t cols, float *out) {
    uint16_t largest = 0;
    memset(out, 0, cols * sizeof(float));
    for (size_t r = 0; r < rows; r++) {
        const uint16_t *row = x + r * cols;
        for (size_t j = 0; j < cols; j++) {
            if (row[j] > largest) largest = row[j];
            out[j] += half_to_float(row[j]);
        }
    }
    return largest;
}

#ifdef HW_X86
/* Eight rows at a time: eight F16C conversions feed one add into the float accumulator row, which stays in L1. */
__attribute__((target("avx2,f16c"))) static uint16_t colsum_f16c(const uint16_t *x, size_t rows, size_t cols,
                                                                  float *out) {
    __m128i widest = _mm_setzero_si128();
    size_t vector_cols = cols & ~(size_t)7;
    size_t r = 0;
    memset(out, 0, cols * sizeof(float));
    for (; r + 8 <= rows; r += 8) {
        const uint16_t *p = x + r * cols;
        const uint16_t *next = p + 8 * cols;
        int prefetch = r + 16 <= rows;
        for (size_t j = 0; j < vector_cols; j += 8) {
            /* Eight row streams at once are more than the hardware prefetcher follows: ask for the next block's
             * lines one cache line (32 halves) at a time. About 1.5x faster on a frame just received. */
            if (prefetch && (j & 31) == 0)
                for (size_t q = 0; q < 8; q++) _mm_prefetch((const char *)(next + q * cols + j), _MM_HINT_T0);
            __m128i h0 = _mm_loadu_si128((const __m128i *)(p + j));
            __m128i h1 = _mm_loadu_si128((const __m128i *)(p + cols + j));
            __m128i h2 = _mm_loadu_si128((const __m128i *)(p + 2 * cols + j));
            __m128i h3 = _mm_loadu_si128((const __m128i *)(p + 3 * cols + j));
            __m128i h4 = _mm_loadu_si128((const __m128i *)(p + 4 * cols + j));
            __m128i h5 = _mm_loadu_si128((const __m128i *)(p + 5 * cols + j));
            __m128i h6 = _mm_loadu_si128((const __m128i *)(p + 6 * cols + j));
            __m128i h7 = _mm_loadu_si128((const __m128i *)(p + 7 * cols + j));
            __m128i m = _mm_max_epu16(_mm_max_epu16(_mm_max_epu16(h0, h1), _mm_max_epu16(h2, h3)),
                                      _mm_max_epu16(_mm_max_epu16(h4, h5), _mm_max_epu16(h6, h7)));
            widest = _mm_max_epu16(widest, m);
            __m256 a = _mm256_add_ps(_mm256_add_ps(_mm256_cvtph_ps(h0), _mm256_cvtph_ps(h1)),
                                     _mm256_add_ps(_mm256_cvtph_ps(h2), _mm256_cvtph_ps(h3)));
            __m256 b = _mm256_add_ps(_mm256_add_ps(_mm256_cvtph_ps(h4), _mm256_cvtph_ps(h5)),
                                     _mm256_add_ps(_mm256_cvtph_ps(h6), _mm256_cvtph_ps(h7)));
            _mm256_storeu_ps(out + j, _mm256_add_ps(_mm256_loadu_ps(out + j), _mm256_add_ps(a, b)));
        }
    }
    for (; r < rows; r++) {
        const uint16_t *p0 = x + r * cols;
        for (size_t j = 0; j < vector_cols; j += 8) {
            __m128i h0 = _mm_loadu_si128((const __m128i *)(p0 + j));
            widest = _mm_max_epu16(widest, h0);
            _mm256_storeu_ps(out + j, _mm256_add_ps(_mm256_loadu_ps(out + j), _mm256_cvtph_ps(h0)));
        }
    }
    uint16_t lanes[8];
    _mm_storeu_si128((__m128i *)lanes, widest);
    uint16_t largest = 0;
    for (int i = 0; i < 8; i++)
        if (lanes[i] > largest) largest = lanes[i];
    for (size_t j = vector_cols; j < cols; j++) { /* the last cols % 8 columns */
        float sum = 0.0f;
        for (size_t q = 0; q < rows; q++) {
            uint16_t h = x[q * cols + j];
            if (h > largest) largest = h;
            sum += half_to_float(h);
        }
        out[j] = sum;
    }
    return largest;
}
#endif

/* 1 when the vector path is used (reported by the loader, so benchmarks can say which one ran). */
int hw_colsum_vectorised(void) {
#ifdef HW_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
#else
    return 0;
#endif
}

/* out[j] = sum over rows of x[r, j] (fp16 bit patterns, row-major [rows, cols]) in float32; returns the largest
 * bit pattern seen, so the caller can tell in the same pass whether any value is negative, infinite or NaN
 * (every such pattern is >= 0x7C00 once the sign bit is counted). */
uint16_t hw_colsum_f16(const uint16_t *x, size_t rows, size_t cols, float *out) {
#ifdef HW_X86
    static int vectorised = -1;
    if (vectorised < 0) vectorised = hw_colsum_vectorised();
    if (vectorised) return colsum_f16c(x, rows, cols, out);
#endif
    return colsum_scalar(x, rows, cols, out);
}

/* The portable loop whatever the CPU: lets tests check both paths on machines that have the vector one. */
uint16_t hw_colsum_f16_portable(const uint16_t *x, size_t rows, size_t cols, float *out) {
    return colsum_scalar(x, rows, cols, out);
}

/* ---- the score update of one step ---------------------------------------------------------------------------------- */

enum { DECAY_ADDITIVE = 0, DECAY_EXPONENTIAL = 1, DECAY_NONE = 2 };

/* For each active entry k (index active[k] into scores/positions, or k itself when active is NULL):
 *     gain = table[query - position] (* boost when apply_boost) * attention[k]
 *     additive:    score = max(gain + score - rate, 0)
 *     exponential: score = gain + score * (1 - rate)
 *     none:        score = gain + score
 * where query is the last active entry's position. The caller guarantees every distance is < table_len.
 * The entry index of every score that moved by more than `epsilon` (|new - old| > epsilon, as numpy computes it) is
 * written to `changed` in ascending order (room for `count`): the brightness batch needs no second pass. The new
 * scores are also written to `live` (room for `count`) in the order of `active`, which is how the store keeps them.
 * Returns the number of changed entries, -1 for an unknown decay mode, -2 for a distance beyond the table. */
int64_t hw_score_step(double *scores, const int64_t *positions, const int64_t *active, size_t count,
                      const float *attention, const double *table, size_t table_len, int apply_boost, double boost,
                      int decay_mode, double rate, double epsilon, int64_t *changed, double *live) {
    if (count == 0) return 0;
    if (decay_mode < DECAY_ADDITIVE || decay_mode > DECAY_NONE) return -1;
    int64_t query = positions[active ? active[count - 1] : (int64_t)(count - 1)];
    double keep = 1.0 - rate;
    int64_t moved = 0;
    for (size_t k = 0; k < count; k++) {
        size_t i = active ? (size_t)active[k] : k;
        size_t distance = (size_t)(query - positions[i]);
        if (distance >= table_len) return -2;
        double gain = table[distance];
        if (apply_boost) gain *= boost;
        gain *= (double)attention[k];
        double score = scores[i], updated;
        if (decay_mode == DECAY_ADDITIVE) {
            gain += score;
            gain -= rate;
            updated = (gain >= 0.0 || gain != gain) ? gain : 0.0; /* np.maximum: keeps -0.0 and NaN */
        } else if (decay_mode == DECAY_EXPONENTIAL) {
            gain += score * keep;
            updated = gain;
        } else {
            gain += score;
            updated = gain;
        }
        scores[i] = updated;
        live[k] = updated;
        double delta = updated - score;
        if (delta < 0.0) delta = -delta;
        if (delta > epsilon) changed[moved++] = (int64_t)i; /* NaN compares false, as in numpy */
    }
    return moved;
}

/* ---- pruning: the prunable sentences among the active entries ---------------------------------------------------- */

/* One pass over the active entries (indices into the per-token arrays, ascending): every run of consecutive entries
 * that share a sentence key and are prunable (not a system turn, not the latest user turn, not the reply being
 * generated) becomes one output row: its key, its largest score, the index in `active` of its first entry, and its
 * size. A sentence lies within one turn, so its entries are all prunable or all protected, and contiguous.
 * Returns the number of runs (the outputs must hold `count` rows). */
int64_t hw_sentence_runs(const int64_t *active, size_t count, const int64_t *keys, const double *scores,
                         const uint8_t *role, const int32_t *turn, int32_t last_user_turn, int32_t gen_turn,
                         int64_t *run_key, double *run_max, int64_t *run_first, int64_t *run_size) {
    /* The open run lives in locals and is written out when it ends: updating the output rows entry by entry made
     * every iteration wait on the previous one's store (the outputs may alias the inputs, as far as C knows). */
    int64_t runs = 0, current = 0, first = 0, size = 0;
    double best = 0.0;
    int have = 0;
#define HW_FLUSH_RUN()                                                                                               \
    do {                                                                                                             \
        run_key[runs] = current;                                                                                     \
        run_max[runs] = best;                                                                                        \
        run_first[runs] = first;                                                                                     \
        run_size[runs] = size;                                                                                       \
        runs++;                                                                                                      \
    } while (0)
    for (size_t k = 0; k < count; k++) {
        int64_t i = active[k];
        int32_t t = turn[i];
        if (role[i] == 0 || t == last_user_turn || (gen_turn >= 0 && t == gen_turn)) {
            if (have) HW_FLUSH_RUN();
            have = 0;
            continue;
        }
        int64_t key = keys[i];
        double score = scores[i];
        if (have && key == current) {
            best = (score > best || score != score) ? score : best; /* NaN propagates, as np.maximum */
            size++;
        } else {
            if (have) HW_FLUSH_RUN();
            current = key;
            best = score;
            first = (int64_t)k;
            size = 1;
            have = 1;
        }
    }
    if (have) HW_FLUSH_RUN();
#undef HW_FLUSH_RUN
    return runs;
}
