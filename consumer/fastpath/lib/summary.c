/* The batch summary (summary.h): open-addressing hash tables over sensors and sensor-minutes. */
#include "summary.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "calendar.h"

static uint64_t hash_key[2];

void summary_seed(uint64_t k0, uint64_t k1) {
    hash_key[0] = k0;
    hash_key[1] = k1;
}

static inline uint64_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static inline uint64_t sensor_hash(const uint8_t id[16]) {
    uint64_t a, b;
    memcpy(&a, id, 8);
    memcpy(&b, id + 8, 8);
    return mix(mix(a ^ hash_key[0]) ^ b ^ hash_key[1]);
}

static inline uint64_t bucket_hash(uint32_t sensor, int64_t bucket) {
    return mix(mix(((uint64_t)sensor << 40) ^ (uint64_t)bucket ^ hash_key[0]) ^ hash_key[1]);
}

static int index_grow(SummaryIndex *ix, size_t n, uint64_t (*hash_of)(const void *, size_t), const void *owner) {
    size_t cap = ix->cap ? ix->cap * 2 : 1024;
    uint32_t *slots = calloc(cap, sizeof(uint32_t));
    if (!slots) return 0;
    for (size_t i = 0; i < n; i++) {
        size_t s = hash_of(owner, i) & (cap - 1);
        while (slots[s]) s = (s + 1) & (cap - 1);
        slots[s] = (uint32_t)(i + 1);
    }
    free(ix->slots);
    ix->slots = slots;
    ix->cap = cap;
    return 1;
}

static uint64_t sensor_hash_at(const void *owner, size_t i) { return sensor_hash(((const Summary *)owner)->sensors[i].id); }
static uint64_t bucket_hash_at(const void *owner, size_t i) {
    const SummaryBucket *b = &((const Summary *)owner)->buckets[i];
    return bucket_hash(b->sensor, b->bucket_us);
}

void summary_free(Summary *s) {
    free(s->sensors);
    free(s->sensor_index.slots);
    free(s->buckets);
    free(s->bucket_index.slots);
    free(s->rows);
    free(s->partitions);
    free(s->partition_newest);
    free(s->days);
    memset(s, 0, sizeof *s);
}

long summary_find(const Summary *s, const uint8_t id[16]) {
    if (!s->sensor_index.cap) return -1;
    size_t mask = s->sensor_index.cap - 1, slot = sensor_hash(id) & mask;
    uint32_t v;
    while ((v = s->sensor_index.slots[slot])) {
        if (memcmp(s->sensors[v - 1].id, id, 16) == 0) return (long)(v - 1);
        slot = (slot + 1) & mask;
    }
    return -1;
}

/* The sensor's index (created on first sight); -1 on memory error. */
static long sensor_of(Summary *s, const uint8_t id[16]) {
    if ((s->n_sensors + 1) * 2 > s->sensor_index.cap && !index_grow(&s->sensor_index, s->n_sensors, sensor_hash_at, s))
        return -1;
    size_t mask = s->sensor_index.cap - 1, slot = sensor_hash(id) & mask;
    uint32_t v;
    while ((v = s->sensor_index.slots[slot])) {
        if (memcmp(s->sensors[v - 1].id, id, 16) == 0) return (long)(v - 1);
        slot = (slot + 1) & mask;
        s->probes++;
    }
    if (s->n_sensors == s->sensors_cap) {
        size_t cap = s->sensors_cap ? s->sensors_cap * 2 : 1024;
        SummarySensor *grown = realloc(s->sensors, cap * sizeof(SummarySensor));
        if (!grown) return -1;
        s->sensors = grown;
        s->sensors_cap = cap;
    }
    SummarySensor *e = &s->sensors[s->n_sensors];
    memcpy(e->id, id, 16);
    e->t_min = e->t_max = NAN;
    e->newest_us = INT64_MIN;
    e->newest_partition = -1;
    e->selected = 0;
    s->sensor_index.slots[slot] = (uint32_t)(++s->n_sensors);
    return (long)(s->n_sensors - 1);
}

static SummaryBucket *bucket_of(Summary *s, uint32_t sensor, int64_t bucket_us, int *created) {
    if ((s->n_buckets + 1) * 2 > s->bucket_index.cap && !index_grow(&s->bucket_index, s->n_buckets, bucket_hash_at, s))
        return NULL;
    size_t mask = s->bucket_index.cap - 1, slot = bucket_hash(sensor, bucket_us) & mask;
    uint32_t v;
    while ((v = s->bucket_index.slots[slot])) {
        SummaryBucket *b = &s->buckets[v - 1];
        if (b->sensor == sensor && b->bucket_us == bucket_us) {
            *created = 0;
            return b;
        }
        slot = (slot + 1) & mask;
        s->probes++;
    }
    if (s->n_buckets == s->buckets_cap) {
        size_t cap = s->buckets_cap ? s->buckets_cap * 2 : 1024;
        SummaryBucket *grown = realloc(s->buckets, cap * sizeof(SummaryBucket));
        if (!grown) return NULL;
        s->buckets = grown;
        s->buckets_cap = cap;
    }
    SummaryBucket *b = &s->buckets[s->n_buckets];
    b->sensor = sensor;
    b->bucket_us = bucket_us;
    s->bucket_index.slots[slot] = (uint32_t)(++s->n_buckets);
    *created = 1;
    return b;
}

int summary_partition(Summary *s, int32_t partition) {
    for (int i = 0; i < s->n_partitions; i++)
        if (s->partitions[i] == partition) return i;
    if (s->n_partitions == s->partitions_cap) {
        int cap = s->partitions_cap ? s->partitions_cap * 2 : 64;
        int32_t *ids = realloc(s->partitions, (size_t)cap * sizeof(int32_t));
        if (!ids) return -1;
        s->partitions = ids;
        int64_t *newest = realloc(s->partition_newest, (size_t)cap * sizeof(int64_t));
        if (!newest) return -1;
        s->partition_newest = newest;
        s->partitions_cap = cap;
    }
    s->partitions[s->n_partitions] = partition;
    s->partition_newest[s->n_partitions] = INT64_MIN;
    return s->n_partitions++;
}

int summary_add_at(Summary *s, const uint8_t id[16], int32_t partition, int seq, int64_t offset, int64_t stamp_us,
                   double t, double h) {
    long si = sensor_of(s, id);
    if (si < 0) return 0;
    if (stamp_us > s->partition_newest[seq]) s->partition_newest[seq] = stamp_us;
    SummarySensor *e = &s->sensors[si];
    if (isnan(e->t_min)) {
        e->t_min = e->t_max = t;
        e->h_min = e->h_max = h;
    } else {
        if (t < e->t_min) e->t_min = t;
        if (t > e->t_max) e->t_max = t;
        if (h < e->h_min) e->h_min = h;
        if (h > e->h_max) e->h_max = h;
    }
    /* newest by (timestamp, partition): the same whatever order the rows arrive in */
    if (stamp_us > e->newest_us || (stamp_us == e->newest_us && partition > e->newest_partition)) {
        e->newest_us = stamp_us;
        e->newest_partition = partition;
    }
    int created;
    SummaryBucket *b = bucket_of(s, (uint32_t)si, stamp_us - (stamp_us % 60000000LL), &created);
    if (!b) return 0;
    if (created) {
        b->count = 1;
        b->t_sum = b->t_min = b->t_max = t;
        b->h_sum = b->h_min = b->h_max = h;
    } else {
        /* the same comparisons as summary.PythonSummary, so the same results */
        b->count++;
        b->t_sum += t;
        if (t < b->t_min) b->t_min = t;
        else if (t > b->t_max) b->t_max = t;
        b->h_sum += h;
        if (h < b->h_min) b->h_min = h;
        else if (h > b->h_max) b->h_max = h;
    }
    if (s->n_rows == s->rows_cap) {
        size_t cap = s->rows_cap ? s->rows_cap * 2 : 4096;
        SummaryRow *grown = realloc(s->rows, cap * sizeof(SummaryRow));
        if (!grown) return 0;
        s->rows = grown;
        s->rows_cap = cap;
    }
    if (s->n_rows) {
        SummaryRow *last = &s->rows[s->n_rows - 1];
        if ((uint32_t)seq < last->partition_seq || ((uint32_t)seq == last->partition_seq && offset < last->offset))
            s->out_of_order = 1;
    }
    SummaryRow *row = &s->rows[s->n_rows++];
    row->sensor = (uint32_t)si;
    row->partition = partition;
    row->partition_seq = (uint32_t)seq;
    row->offset = offset;
    row->stamp_us = stamp_us;
    row->t = t;
    row->h = h;
    return 1;
}

int summary_note_day(Summary *s, int64_t day) {
    for (int i = s->n_days - 1; i >= 0; i--)
        if (s->days[i] == day) return 1;
    if (s->n_days == s->days_cap) {
        int cap = s->days_cap ? s->days_cap * 2 : 16;
        int64_t *days = realloc(s->days, (size_t)cap * sizeof(int64_t));
        if (!days) return 0;
        s->days = days;
        s->days_cap = cap;
    }
    s->days[s->n_days++] = day;
    return 1;
}

int summary_add(Summary *s, const uint8_t id[16], int32_t partition, int64_t offset, int64_t stamp_us, double t,
                double h) {
    int seq = summary_partition(s, partition);
    return seq >= 0 && summary_add_at(s, id, partition, seq, offset, stamp_us, t, h) &&
           summary_note_day(s, floor_div(stamp_us, US_PER_DAY));
}

static int write_bucket(Buffer *out, const uint8_t id[16], const SummaryBucket *b) {
    if (!buffer_reserve(out, 36 + 24 + 24 + 6 * 26 + 16)) return 0;
    char *o = out->data + out->len;
    o = put_uuid(o, id);
    *o++ = '\t';
    o = put_bucket_time(o, b->bucket_us);
    *o++ = '\t';
    o = put_int(o, b->count);
    const double values[6] = {b->t_sum, b->t_min, b->t_max, b->h_sum, b->h_min, b->h_max};
    for (int i = 0; i < 6; i++) {
        *o++ = '\t';
        o = put_double(o, values[i]);
    }
    *o++ = '\n';
    out->len = (size_t)(o - out->data);
    return 1;
}

int summary_rollup_copy(const Summary *s, int seconds, Buffer *out) {
    if (seconds != 60 && seconds != 3600) return -1;
    if (seconds == 60) {
        for (size_t i = 0; i < s->n_buckets; i++)
            if (!write_bucket(out, s->sensors[s->buckets[i].sensor].id, &s->buckets[i])) return 0;
        return 1;
    }
    Summary hours = {0}; /* only its buckets are used: sensor numbers stay those of ``s`` */
    int ok = 1;
    for (size_t i = 0; i < s->n_buckets && ok; i++) {
        const SummaryBucket *m = &s->buckets[i];
        int created;
        SummaryBucket *b = bucket_of(&hours, m->sensor, m->bucket_us - (m->bucket_us % 3600000000LL), &created);
        if (!b) {
            ok = 0;
        } else if (created) {
            b->count = m->count;
            b->t_sum = m->t_sum, b->t_min = m->t_min, b->t_max = m->t_max;
            b->h_sum = m->h_sum, b->h_min = m->h_min, b->h_max = m->h_max;
        } else {
            b->count += m->count;
            b->t_sum += m->t_sum;
            b->t_min = fmin(b->t_min, m->t_min);
            b->t_max = fmax(b->t_max, m->t_max);
            b->h_sum += m->h_sum;
            b->h_min = fmin(b->h_min, m->h_min);
            b->h_max = fmax(b->h_max, m->h_max);
        }
    }
    for (size_t i = 0; i < hours.n_buckets && ok; i++)
        ok = write_bucket(out, s->sensors[hours.buckets[i].sensor].id, &hours.buckets[i]);
    summary_free(&hours);
    return ok;
}

static int row_order(const void *a, const void *b) {
    const SummaryRow *x = *(const SummaryRow *const *)a, *y = *(const SummaryRow *const *)b;
    if (x->partition_seq != y->partition_seq) return x->partition_seq < y->partition_seq ? -1 : 1;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    return 0;
}

size_t summary_selected_rows(const Summary *s, const SummaryRow **picked) {
    size_t n = 0;
    for (size_t i = 0; i < s->n_rows; i++)
        if (s->sensors[s->rows[i].sensor].selected) picked[n++] = &s->rows[i];
    if (s->out_of_order) qsort(picked, n, sizeof(SummaryRow *), row_order);
    return n;
}
