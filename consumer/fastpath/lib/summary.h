/* What one consumer batch derives from its valid readings, besides their COPY rows: sensor-minute
   rollup buckets, each sensor's range and newest reading, each partition's newest timestamp,
   the UTC days touched, and the readings (for the alert rules of the few sensors that can change
   state). Pure C (the C test driver runs it under the sanitizers); iot_fastpath.c binds it as
   iot_fastpath.Summary, and iot_consumer/summary.py is the same interface in Python - the
   reference the differential tests hold this to. */
#ifndef IOT_FASTPATH_SUMMARY_H
#define IOT_FASTPATH_SUMMARY_H

#include <stddef.h>
#include <stdint.h>

#include "copy_text.h"

typedef struct {
    uint8_t id[16];
    double t_min, t_max, h_min, h_max;
    int64_t newest_us;
    int32_t newest_partition;
    int selected;
} SummarySensor;

typedef struct {
    uint32_t sensor;
    int64_t bucket_us;
    int64_t count;
    double t_sum, t_min, t_max, h_sum, h_min, h_max;
} SummaryBucket;

typedef struct {
    uint32_t sensor;
    int32_t partition;
    uint32_t partition_seq;
    int64_t offset, stamp_us;
    double t, h;
} SummaryRow;

typedef struct {
    uint32_t *slots; /* index + 1; 0 = empty */
    size_t cap;
} SummaryIndex;

/* Zero-initialised = empty; summary_free releases it. */
typedef struct {
    SummarySensor *sensors;
    size_t n_sensors, sensors_cap;
    SummaryIndex sensor_index;
    SummaryBucket *buckets;
    size_t n_buckets, buckets_cap;
    SummaryIndex bucket_index;
    SummaryRow *rows;
    size_t n_rows, rows_cap;
    int32_t *partitions; /* in first-seen order (the Python path's order) */
    int64_t *partition_newest;
    int n_partitions, partitions_cap;
    int out_of_order; /* a row was added after a later row of its partition (Python fallback rows) */
    int64_t *days; /* every UTC day touched: each needs its partitions before the COPY */
    int n_days, days_cap;
    uint64_t probes; /* hash-table slots looked at beyond the first (crafted ids must not make it grow) */
} Summary;

/* Sensor ids and timestamps come from devices: with a known hash, crafted ids could all land in
   one slot and make every batch quadratic. Seed once per process with random bytes. */
void summary_seed(uint64_t k0, uint64_t k1);
void summary_free(Summary *s);
/* The partition's position in first-seen order (created on first sight); -1 on memory error. */
int summary_partition(Summary *s, int32_t partition);
/* One reading of ``partition`` (``seq`` = summary_partition's answer); 0 on memory error. The
   day is not noted: see summary_note_day (a take notes its days once, not per row). */
int summary_add_at(Summary *s, const uint8_t id[16], int32_t partition, int seq, int64_t offset, int64_t stamp_us,
                   double t, double h);
/* One reading, its day noted; 0 on memory error. */
int summary_add(Summary *s, const uint8_t id[16], int32_t partition, int64_t offset, int64_t stamp_us, double t,
                double h);
/* ``day`` (days since 1970-01-01) is touched; 0 on memory error. */
int summary_note_day(Summary *s, int64_t day);
/* rollup_stage rows in COPY text, per minute (60) or merged into hours (3600), appended to
   ``out``: 1, 0 on memory error, -1 for other ``seconds``. */
int summary_rollup_copy(const Summary *s, int seconds, Buffer *out);
/* The sensor's index, or -1 when the batch has no reading of it. */
long summary_find(const Summary *s, const uint8_t id[16]);
/* The rows of the sensors whose ``selected`` is set, in partition (first-seen) then offset
   order, as pointers into ``s->rows`` written to ``picked`` (room for n_rows); their count. */
size_t summary_selected_rows(const Summary *s, const SummaryRow **picked);

#endif
