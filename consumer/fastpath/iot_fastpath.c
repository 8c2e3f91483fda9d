/*
 * iot_fastpath: the consumer's native hot path - the CPython binding.
 *
 * One pass over the raw bytes kafka-python fetched for one partition (record batches, message
 * format v2): check each batch's CRC-32C, walk its records, validate the strict common form of
 * a reading and write its sensores row in COPY text format - no Python object per record.
 * Anything outside that strict form (escapes, extra fields, other timestamp forms, values out
 * of range, a null value...) is handed back as a plain record for the Python validator, which
 * stays the reference: it decides, with the exact reason, whether the record is a dead letter.
 * Compressed batches and other message formats are left to kafka-python ("python" status).
 *
 *   Cursor(buffer, fetch_offset)              iterates the fetched bytes of one partition
 *   Cursor.take(max_records, partition, limits...) -> (Rows | None, fallback records, status)
 *   Summary()                                 what one consumer batch needs besides the COPY:
 *                                             rollup buckets, per-sensor ranges, alert inputs
 *
 * The units below this file are plain C (lib/: crc32c, wire, reading, copy_text, calendar), so
 * a C test driver (tests/driver.c) runs them under AddressSanitizer and UBSan; this file holds
 * what touches Python objects. The Python side (iot_consumer.decoding / batch / rollups) is the
 * specification; the differential tests in tests/unit/test_fastpath.py hold both paths to the
 * same results.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "calendar.h"
#include "copy_text.h"
#include "crc32c.h"
#include "reading.h"
#include "wire.h"

/* ------------------------------------------------------------------ Rows: one take's valid readings */
typedef struct {
    uint8_t sensor[16];
    int64_t offset;
    int64_t stamp_us;
    double t, h;
} Row;

typedef struct {
    PyObject_HEAD
    PyObject *copy; /* bytes: the rows in COPY text format */
    Row *rows;
    Py_ssize_t n;
    int64_t days[64];
    int n_days;
    int overflow_days; /* more distinct days than fit: Summary recomputes from the rows */
} RowsObject;

static void rows_dealloc(RowsObject *self) {
    Py_XDECREF(self->copy);
    PyMem_RawFree(self->rows);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *rows_get_copy(RowsObject *self, void *closure) { return Py_NewRef(self->copy); }
static PyObject *rows_get_count(RowsObject *self, void *closure) { return PyLong_FromSsize_t(self->n); }
static PyObject *rows_get_first_offset(RowsObject *self, void *closure) {
    return PyLong_FromLongLong(self->n ? self->rows[0].offset : -1);
}
static PyObject *rows_get_last_offset(RowsObject *self, void *closure) {
    return PyLong_FromLongLong(self->n ? self->rows[self->n - 1].offset : -1);
}
static PyObject *rows_get_last_stamp(RowsObject *self, void *closure) {
    return PyLong_FromLongLong(self->n ? self->rows[self->n - 1].stamp_us : 0);
}

static PyObject *rows_offsets(RowsObject *self, PyObject *unused) {
    PyObject *list = PyList_New(self->n);
    if (!list) return NULL;
    for (Py_ssize_t i = 0; i < self->n; i++) {
        PyObject *v = PyLong_FromLongLong(self->rows[i].offset);
        if (!v) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, v);
    }
    return list;
}

static PyMethodDef rows_methods[] = {
    {"offsets", (PyCFunction)rows_offsets, METH_NOARGS, "the Kafka offsets of the rows"},
    {NULL},
};

static PyGetSetDef rows_getset[] = {
    {"copy", (getter)rows_get_copy, NULL, "the rows of sensores in COPY text format", NULL},
    {"count", (getter)rows_get_count, NULL, "number of rows", NULL},
    {"first_offset", (getter)rows_get_first_offset, NULL, "Kafka offset of the first row", NULL},
    {"last_offset", (getter)rows_get_last_offset, NULL, "Kafka offset of the last row", NULL},
    {"last_stamp_us", (getter)rows_get_last_stamp, NULL, "timestamp of the last row, µs since the epoch", NULL},
    {NULL},
};

static PyTypeObject RowsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "iot_fastpath.Rows",
    .tp_basicsize = sizeof(RowsObject),
    .tp_dealloc = (destructor)rows_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Valid readings decoded by one Cursor.take (COPY text + compact rows)",
    .tp_getset = rows_getset,
    .tp_methods = rows_methods,
};

/* ------------------------------------------------------------------ Cursor */
static PyObject *CorruptBatch;

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    int has_view;
    int64_t fetch_offset;
    Py_ssize_t pos; /* start of the next batch */
    Py_ssize_t batch_start; /* start of the batch being read (or of the next one) */
    /* the batch being read */
    int in_batch;
    const uint8_t *rec, *batch_end;
    int32_t remaining;
    int64_t base_offset, base_ts, max_ts, batch_next_offset;
    int log_append_time;
    /* what kafka-python's PartitionRecords tracks */
    int64_t next_fetch_offset;
    int32_t leader_epoch;
    int64_t last_batch_next_offset;
    int64_t records_read, bytes_read;
    PyObject *pending_error; /* found after rows were returned: raised by the next take */
} CursorObject;

static int cursor_init(CursorObject *self, PyObject *args, PyObject *kwds) {
    PyObject *buffer;
    long long fetch_offset;
    static char *kwlist[] = {"buffer", "fetch_offset", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OL", kwlist, &buffer, &fetch_offset)) return -1;
    if (self->has_view) {
        PyBuffer_Release(&self->view);
        self->has_view = 0;
    }
    if (PyObject_GetBuffer(buffer, &self->view, PyBUF_SIMPLE) < 0) return -1;
    self->has_view = 1;
    self->fetch_offset = fetch_offset;
    self->next_fetch_offset = fetch_offset;
    self->pos = 0;
    self->in_batch = 0;
    self->leader_epoch = -1;
    self->last_batch_next_offset = -1;
    self->records_read = self->bytes_read = 0;
    Py_CLEAR(self->pending_error);
    return 0;
}

static void cursor_dealloc(CursorObject *self) {
    if (self->has_view) PyBuffer_Release(&self->view);
    Py_XDECREF(self->pending_error);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *corrupt(const char *fmt, long partition, long long offset) {
    return PyUnicode_FromFormat(fmt, partition, offset);
}

/* Fallback record: (offset, timestamp, timestamp_type, key, value, headers, size_in_bytes). */
static PyObject *fallback_record(CursorObject *c, int64_t offset, int64_t ts_delta, const uint8_t *key, int64_t key_len,
                                 const uint8_t *value, int64_t value_len, const uint8_t *headers, int64_t header_count,
                                 const uint8_t *headers_end, Py_ssize_t size) {
    /* Headers are skipped, not built: the consumer never reads them, and a record may carry
       hundreds of thousands (each would be a tuple) with keys of any bytes. */
    (void)headers;
    (void)header_count;
    (void)headers_end;
    PyObject *headers_list = PyList_New(0);
    if (!headers_list) return NULL;
    PyObject *ts;
    int64_t sum;
    if (c->log_append_time) ts = PyLong_FromLongLong(c->max_ts);
    else if (!__builtin_add_overflow(c->base_ts, ts_delta, &sum)) ts = PyLong_FromLongLong(sum);
    else { /* a crafted base timestamp: the exact sum, as kafka-python computes it */
        PyObject *base = PyLong_FromLongLong(c->base_ts), *delta = PyLong_FromLongLong(ts_delta);
        ts = (base && delta) ? PyNumber_Add(base, delta) : NULL;
        Py_XDECREF(base);
        Py_XDECREF(delta);
    }
    PyObject *k = key_len < 0 ? Py_NewRef(Py_None) : PyBytes_FromStringAndSize((const char *)key, key_len);
    PyObject *v = value_len < 0 ? Py_NewRef(Py_None) : PyBytes_FromStringAndSize((const char *)value, value_len);
    PyObject *out = NULL;
    if (ts && k && v) out = Py_BuildValue("(LOiOONn)", (long long)offset, ts, c->log_append_time, k, v, headers_list, size);
    else Py_DECREF(headers_list);
    Py_XDECREF(ts);
    Py_XDECREF(k);
    Py_XDECREF(v);
    return out;
}

#define BATCH_HEADER 61

static PyObject *cursor_take(CursorObject *self, PyObject *args, PyObject *kwds) {
    Py_ssize_t max_records;
    long partition;
    Limits lim;
    long long earliest, latest;
    Py_ssize_t max_payload;
    static char *kwlist[] = {"max_records", "partition", "t_min", "t_max", "h_min", "h_max",
                             "max_payload", "earliest_us", "latest_us", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nlddddnLL", kwlist, &max_records, &partition, &lim.t_min, &lim.t_max,
                                     &lim.h_min, &lim.h_max, &max_payload, &earliest, &latest))
        return NULL;
    lim.max_payload = max_payload;
    lim.earliest_us = earliest;
    lim.latest_us = latest;
    if (self->pending_error) {
        PyErr_SetObject(CorruptBatch, self->pending_error);
        Py_CLEAR(self->pending_error);
        return NULL;
    }
    const uint8_t *buf = self->view.buf;
    Py_ssize_t buf_len = self->view.len;
    Buffer out = {0};
    Row *rows = NULL;
    Py_ssize_t n_rows = 0, rows_cap = 0, taken = 0;
    PyObject *fallbacks = PyList_New(0);
    PyObject *error = NULL;
    const char *status = "done";
    RowsObject *result = NULL;
    int64_t days[64];
    int n_days = 0, overflow_days = 0, last_is_row = 0;
    if (!fallbacks) return NULL;
    /* The loop reads only the fetched bytes and C memory: other threads (the writer thread's
       psycopg2 calls) run meanwhile. Python objects are made with the GIL held again. */
    PyThreadState *thread_state = NULL;
#define RELEASE_GIL() (thread_state = PyEval_SaveThread())
#define HOLD_GIL()                            \
    do {                                      \
        if (thread_state) {                   \
            PyEval_RestoreThread(thread_state); \
            thread_state = NULL;              \
        }                                     \
    } while (0)
    RELEASE_GIL();

    while (taken < max_records) {
        if (!self->in_batch) {
            Py_ssize_t remaining = buf_len - self->pos;
            if (remaining < 12) goto finished; /* kafka-python ignores a partial trailing batch */
            const uint8_t *b = buf + self->pos;
            self->batch_start = self->pos;
            int32_t length = be32(b + 8);
            if (length < 0) { /* kafka-python fails on such a batch too (a slice that ends before it starts) */
                HOLD_GIL();
                error = corrupt("Record batch for partition %ld at offset %lld has a negative length", partition, be64(b));
                break;
            }
            if ((Py_ssize_t)length + 12 > remaining) goto finished;
            if (remaining < 17 || b[16] != 2) { status = "python"; goto done; }
            if (length + 12 < BATCH_HEADER) {
                HOLD_GIL();
                error = corrupt("Record batch for partition %ld at offset %lld is too short", partition, be64(b));
                break;
            }
            int16_t attributes = be16(b + 21);
            if (attributes & 0x07) { status = "python"; goto done; } /* compressed: kafka-python decompresses */
            if (crc32c(b + 21, (size_t)length + 12 - 21) != (uint32_t)be32(b + 17)) {
                HOLD_GIL();
                error = corrupt("Record batch for partition %ld at offset %lld failed crc check", partition, be64(b));
                break;
            }
            self->base_offset = be64(b);
            self->leader_epoch = be32(b + 12);
            if (__builtin_add_overflow(self->base_offset, (int64_t)be32(b + 23) + 1, &self->batch_next_offset)) {
                HOLD_GIL();
                error = corrupt("Record batch for partition %ld at offset %lld: its last offset overflows", partition,
                                self->base_offset);
                break;
            }
            self->last_batch_next_offset = self->batch_next_offset;
            self->pos += (Py_ssize_t)length + 12;
            if (attributes & 0x20) { /* control batch (commit/abort marker): never returned */
                self->next_fetch_offset = self->batch_next_offset;
                continue;
            }
            self->log_append_time = (attributes & 0x08) != 0;
            self->base_ts = be64(b + 27);
            self->max_ts = be64(b + 35);
            self->remaining = be32(b + 57);
            self->rec = b + BATCH_HEADER;
            self->batch_end = b + length + 12;
            self->in_batch = 1;
        }
        if (self->remaining <= 0) {
            if (self->rec != self->batch_end) {
                HOLD_GIL();
                error = corrupt("Record batch for partition %ld at offset %lld: unconsumed bytes after all records",
                                partition, self->base_offset);
                break;
            }
            self->in_batch = 0;
            continue;
        }
        /* one record */
        const uint8_t *record_begin = self->rec, *p = self->rec, *end = self->batch_end;
        int64_t length, ts_delta, offset_delta, key_len, value_len, header_count;
        if (!read_varint(&p, end, &length) || length < 0 || length > end - p) goto bad_record;
        const uint8_t *rec_end = p + length;
        p++; /* attributes */
        if (p > rec_end || !read_varint(&p, rec_end, &ts_delta) || !read_varint(&p, rec_end, &offset_delta) ||
            !read_varint(&p, rec_end, &key_len) || key_len < -1 || key_len > rec_end - p)
            goto bad_record;
        const uint8_t *key = p;
        if (key_len > 0) p += key_len;
        if (!read_varint(&p, rec_end, &value_len) || value_len < -1 || value_len > rec_end - p) goto bad_record;
        const uint8_t *value = p;
        if (value_len > 0) p += value_len;
        if (!read_varint(&p, rec_end, &header_count) || header_count < 0) goto bad_record;
        const uint8_t *headers = p;
        for (int64_t i = 0; i < header_count; i++) {
            int64_t hk, hv;
            if (!read_varint(&p, rec_end, &hk) || hk < 0 || hk > rec_end - p) goto bad_record;
            p += hk;
            if (!read_varint(&p, rec_end, &hv) || hv < -1 || hv > rec_end - p) goto bad_record;
            if (hv > 0) p += hv;
        }
        if (p != rec_end) goto bad_record;
        self->rec = rec_end;
        self->remaining--;
        int64_t offset;
        if (__builtin_add_overflow(self->base_offset, offset_delta, &offset)) goto bad_record;
        if (offset < self->fetch_offset) continue; /* before the position: a batch fetched whole */
        Py_ssize_t size = (Py_ssize_t)(rec_end - record_begin);
        self->records_read++;
        self->bytes_read += size;
        self->next_fetch_offset = offset + 1;
        taken++;
        Parsed r;
        last_is_row = value_len > 0 && parse_reading(value, value_len, &lim, &r);
        if (last_is_row) {
            if (n_rows == rows_cap) {
                rows_cap = rows_cap ? rows_cap * 2 : 1024;
                Row *grown = PyMem_RawRealloc(rows, (size_t)rows_cap * sizeof(Row));
                if (!grown) { HOLD_GIL(); PyErr_NoMemory(); goto fail; }
                rows = grown;
            }
            Row *row = &rows[n_rows++];
            memcpy(row->sensor, r.sensor, 16);
            row->offset = offset;
            row->stamp_us = r.stamp_us;
            row->t = r.t;
            row->h = r.h;
            if (!buffer_reserve(&out, 36 + r.stamp_len + r.t_len + r.h_len + 64)) { HOLD_GIL(); PyErr_NoMemory(); goto fail; }
            char *o = out.data + out.len;
            o = put_uuid(o, r.sensor);
            *o++ = '\t';
            memcpy(o, r.stamp_text, r.stamp_len);
            o += r.stamp_len;
            *o++ = '\t';
            if (r.t_negative_zero_int) *o++ = '0';
            else { memcpy(o, r.t_text, r.t_len); o += r.t_len; }
            *o++ = '\t';
            if (r.h_negative_zero_int) *o++ = '0';
            else { memcpy(o, r.h_text, r.h_len); o += r.h_len; }
            *o++ = '\t';
            o = put_int(o, partition);
            *o++ = '\t';
            o = put_int(o, offset);
            memcpy(o, "\t\\N\n", 4);
            o += 4;
            out.len = (size_t)(o - out.data);
            int64_t day = floor_div(r.stamp_us, US_PER_DAY);
            int known = 0;
            for (int i = n_days - 1; i >= 0; i--) {
                if (days[i] == day) { known = 1; break; }
            }
            if (!known) {
                if (n_days < 64) days[n_days++] = day;
                else overflow_days = 1;
            }
        } else {
            HOLD_GIL();
            PyObject *record = fallback_record(self, offset, ts_delta, key, key_len, value, value_len, headers,
                                               header_count, rec_end, size);
            if (!record || PyList_Append(fallbacks, record) < 0) { Py_XDECREF(record); goto fail; }
            Py_DECREF(record);
            RELEASE_GIL();
        }
        continue;
    bad_record:
        HOLD_GIL();
        error = corrupt("Record batch for partition %ld at offset %lld holds a malformed record", partition,
                        self->base_offset);
        break;
    }
    status = "limit";
    goto done;
finished:
    HOLD_GIL();
    /* the whole buffer is read: like kafka-python, continue after the last batch even if
       compaction removed its last records */
    if (self->last_batch_next_offset >= 0) self->next_fetch_offset = self->last_batch_next_offset;
    status = "done";
done:
    HOLD_GIL();
    if (error) {
        if (taken == 0) {
            PyErr_SetObject(CorruptBatch, error);
            Py_DECREF(error);
            goto fail;
        }
        self->pending_error = error; /* the records before it are returned first, as kafka-python does */
        status = "limit";
    }
    if (n_rows) {
        result = PyObject_New(RowsObject, &RowsType);
        if (!result) goto fail;
        result->copy = PyBytes_FromStringAndSize(out.data, (Py_ssize_t)out.len);
        result->rows = rows;
        result->n = n_rows;
        memcpy(result->days, days, sizeof(int64_t) * (size_t)n_days);
        result->n_days = n_days;
        result->overflow_days = overflow_days;
        rows = NULL;
        if (!result->copy) { Py_DECREF(result); goto fail; }
    }
    buffer_free(&out);
    PyMem_RawFree(rows);
    PyObject *ret = Py_BuildValue("(OOsnO)", result ? (PyObject *)result : Py_None, fallbacks, status, taken,
                                  last_is_row ? Py_True : Py_False);
    Py_XDECREF(result);
    Py_DECREF(fallbacks);
    return ret;
fail:
    HOLD_GIL();
    buffer_free(&out);
    PyMem_RawFree(rows);
    Py_DECREF(fallbacks);
    return NULL;
#undef RELEASE_GIL
#undef HOLD_GIL
}

static PyObject *cursor_get_next_fetch_offset(CursorObject *self, void *c) { return PyLong_FromLongLong(self->next_fetch_offset); }
static PyObject *cursor_get_leader_epoch(CursorObject *self, void *c) { return PyLong_FromLong(self->leader_epoch); }
static PyObject *cursor_get_position(CursorObject *self, void *c) { return PyLong_FromSsize_t(self->pos); }
static PyObject *cursor_get_batch_start(CursorObject *self, void *c) {
    return PyLong_FromSsize_t(self->in_batch ? self->batch_start : self->pos);
}
static PyObject *cursor_get_in_batch(CursorObject *self, void *c) { return PyBool_FromLong(self->in_batch); }
static PyObject *cursor_get_records_read(CursorObject *self, void *c) { return PyLong_FromLongLong(self->records_read); }
static PyObject *cursor_get_bytes_read(CursorObject *self, void *c) { return PyLong_FromLongLong(self->bytes_read); }

static PyGetSetDef cursor_getset[] = {
    {"next_fetch_offset", (getter)cursor_get_next_fetch_offset, NULL, "the offset after the last record taken", NULL},
    {"leader_epoch", (getter)cursor_get_leader_epoch, NULL, "leader epoch of the last batch read", NULL},
    {"position", (getter)cursor_get_position, NULL, "byte position of the next batch", NULL},
    {"batch_start", (getter)cursor_get_batch_start, NULL, "byte position of the batch the next record is in", NULL},
    {"in_batch", (getter)cursor_get_in_batch, NULL, "True while records of the current batch are left", NULL},
    {"records_read", (getter)cursor_get_records_read, NULL, "records taken so far", NULL},
    {"bytes_read", (getter)cursor_get_bytes_read, NULL, "record bytes taken so far", NULL},
    {NULL},
};

static PyMethodDef cursor_methods[] = {
    {"take", (PyCFunction)(void (*)(void))cursor_take, METH_VARARGS | METH_KEYWORDS,
     "take(max_records, partition, t_min, t_max, h_min, h_max, max_payload, earliest_us, latest_us)"
     " -> (Rows | None, fallback records, status, taken, last record was a row)"},
    {NULL},
};

static PyTypeObject CursorType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "iot_fastpath.Cursor",
    .tp_basicsize = sizeof(CursorObject),
    .tp_dealloc = (destructor)cursor_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Cursor(buffer, fetch_offset): reads one partition's fetched record batches",
    .tp_init = (initproc)cursor_init,
    .tp_new = PyType_GenericNew,
    .tp_getset = cursor_getset,
    .tp_methods = cursor_methods,
};

/* ------------------------------------------------------------------ Summary: one consumer batch */
typedef struct {
    uint8_t id[16];
    double t_min, t_max, h_min, h_max;
    int64_t newest_us;
    int32_t newest_partition;
    int selected;
} Sensor;

typedef struct {
    uint32_t sensor;
    int64_t bucket_us;
    int64_t count;
    double t_sum, t_min, t_max, h_sum, h_min, h_max;
} Bucket;

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
} Index;

typedef struct {
    PyObject_HEAD
    Sensor *sensors;
    size_t n_sensors, sensors_cap;
    Index sensor_index;
    Bucket *buckets;
    size_t n_buckets, buckets_cap;
    Index bucket_index;
    SummaryRow *rows;
    size_t n_rows, rows_cap;
    int32_t *partitions; /* in first-seen order (the Python path's order) */
    int64_t *partition_newest;
    int n_partitions, partitions_cap;
    int out_of_order; /* a row was added after a later row of its partition (Python fallback rows) */
    int64_t *days; /* every UTC day touched: each needs its partitions before the COPY */
    int n_days, days_cap;
    uint64_t probes; /* hash-table slots looked at beyond the first (crafted ids must not make it grow) */
} SummaryObject;

static inline uint64_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

/* Sensor ids and timestamps come from devices: with a known hash, crafted ids could all land in one
   slot and make every batch quadratic. The key is random per process (set at import). */
static uint64_t hash_key[2];

static inline uint64_t sensor_hash(const uint8_t id[16]) {
    uint64_t a, b;
    memcpy(&a, id, 8);
    memcpy(&b, id + 8, 8);
    return mix(mix(a ^ hash_key[0]) ^ b ^ hash_key[1]);
}

static inline uint64_t bucket_hash(uint32_t sensor, int64_t bucket) {
    return mix(mix(((uint64_t)sensor << 40) ^ (uint64_t)bucket ^ hash_key[0]) ^ hash_key[1]);
}

static int index_grow(Index *ix, size_t n, uint64_t (*hash_of)(void *, size_t), void *owner) {
    size_t cap = ix->cap ? ix->cap * 2 : 1024;
    uint32_t *slots = PyMem_Calloc(cap, sizeof(uint32_t));
    if (!slots) return 0;
    for (size_t i = 0; i < n; i++) {
        size_t s = hash_of(owner, i) & (cap - 1);
        while (slots[s]) s = (s + 1) & (cap - 1);
        slots[s] = (uint32_t)(i + 1);
    }
    PyMem_Free(ix->slots);
    ix->slots = slots;
    ix->cap = cap;
    return 1;
}

static uint64_t sensor_hash_at(void *owner, size_t i) { return sensor_hash(((SummaryObject *)owner)->sensors[i].id); }
static uint64_t bucket_hash_at(void *owner, size_t i) {
    Bucket *b = &((SummaryObject *)owner)->buckets[i];
    return bucket_hash(b->sensor, b->bucket_us);
}

/* The sensor's index (created on first sight); -1 on memory error. */
static long sensor_of(SummaryObject *s, const uint8_t id[16]) {
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
        Sensor *grown = PyMem_Realloc(s->sensors, cap * sizeof(Sensor));
        if (!grown) return -1;
        s->sensors = grown;
        s->sensors_cap = cap;
    }
    Sensor *e = &s->sensors[s->n_sensors];
    memcpy(e->id, id, 16);
    e->t_min = e->t_max = NAN;
    e->newest_us = INT64_MIN;
    e->newest_partition = -1;
    e->selected = 0;
    s->sensor_index.slots[slot] = (uint32_t)(++s->n_sensors);
    return (long)(s->n_sensors - 1);
}

static Bucket *bucket_of(SummaryObject *s, uint32_t sensor, int64_t bucket_us, int *created) {
    if ((s->n_buckets + 1) * 2 > s->bucket_index.cap && !index_grow(&s->bucket_index, s->n_buckets, bucket_hash_at, s))
        return NULL;
    size_t mask = s->bucket_index.cap - 1, slot = bucket_hash(sensor, bucket_us) & mask;
    uint32_t v;
    while ((v = s->bucket_index.slots[slot])) {
        Bucket *b = &s->buckets[v - 1];
        if (b->sensor == sensor && b->bucket_us == bucket_us) {
            *created = 0;
            return b;
        }
        slot = (slot + 1) & mask;
        s->probes++;
    }
    if (s->n_buckets == s->buckets_cap) {
        size_t cap = s->buckets_cap ? s->buckets_cap * 2 : 1024;
        Bucket *grown = PyMem_Realloc(s->buckets, cap * sizeof(Bucket));
        if (!grown) return NULL;
        s->buckets = grown;
        s->buckets_cap = cap;
    }
    Bucket *b = &s->buckets[s->n_buckets];
    b->sensor = sensor;
    b->bucket_us = bucket_us;
    s->bucket_index.slots[slot] = (uint32_t)(++s->n_buckets);
    *created = 1;
    return b;
}

/* The partition's position in first-seen order; -1 on memory error. */
static int partition_seq(SummaryObject *s, int32_t partition) {
    for (int i = 0; i < s->n_partitions; i++)
        if (s->partitions[i] == partition) return i;
    if (s->n_partitions == s->partitions_cap) {
        int cap = s->partitions_cap ? s->partitions_cap * 2 : 64;
        int32_t *ids = PyMem_Realloc(s->partitions, (size_t)cap * sizeof(int32_t));
        if (ids) s->partitions = ids;
        int64_t *newest = ids ? PyMem_Realloc(s->partition_newest, (size_t)cap * sizeof(int64_t)) : NULL;
        if (!newest) return -1;
        s->partition_newest = newest;
        s->partitions_cap = cap;
    }
    s->partitions[s->n_partitions] = partition;
    s->partition_newest[s->n_partitions] = INT64_MIN;
    return s->n_partitions++;
}

/* rollups.by_minute for one reading, plus the per-sensor range, newest reading and the row. */
static int summary_add_one(SummaryObject *s, const uint8_t id[16], int32_t partition, int seq, int64_t offset,
                           int64_t stamp_us, double t, double h) {
    long si = sensor_of(s, id);
    if (si < 0) return 0;
    if (stamp_us > s->partition_newest[seq]) s->partition_newest[seq] = stamp_us;
    Sensor *e = &s->sensors[si];
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
    Bucket *b = bucket_of(s, (uint32_t)si, stamp_us - (stamp_us % 60000000LL), &created);
    if (!b) return 0;
    if (created) {
        b->count = 1;
        b->t_sum = b->t_min = b->t_max = t;
        b->h_sum = b->h_min = b->h_max = h;
    } else {
        /* the same comparisons as rollups.by_minute, so the same results */
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
        SummaryRow *grown = PyMem_Realloc(s->rows, cap * sizeof(SummaryRow));
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

/* 0 on memory error. */
static int summary_note_day(SummaryObject *s, int64_t day) {
    for (int i = s->n_days - 1; i >= 0; i--)
        if (s->days[i] == day) return 1;
    if (s->n_days == s->days_cap) {
        int cap = s->days_cap ? s->days_cap * 2 : 16;
        int64_t *days = PyMem_Realloc(s->days, (size_t)cap * sizeof(int64_t));
        if (!days) return 0;
        s->days = days;
        s->days_cap = cap;
    }
    s->days[s->n_days++] = day;
    return 1;
}

static PyObject *summary_add(SummaryObject *self, PyObject *args) {
    RowsObject *rows;
    int partition;
    if (!PyArg_ParseTuple(args, "O!i", &RowsType, &rows, &partition)) return NULL;
    int seq = partition_seq(self, partition);
    if (seq < 0) return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < rows->n; i++) {
        Row *r = &rows->rows[i];
        if (!summary_add_one(self, r->sensor, partition, seq, r->offset, r->stamp_us, r->t, r->h)) return PyErr_NoMemory();
    }
    if (rows->overflow_days) { /* more distinct days than a Rows keeps: from the rows themselves */
        for (Py_ssize_t i = 0; i < rows->n; i++)
            if (!summary_note_day(self, floor_div(rows->rows[i].stamp_us, US_PER_DAY))) return PyErr_NoMemory();
    } else {
        for (int i = 0; i < rows->n_days; i++)
            if (!summary_note_day(self, rows->days[i])) return PyErr_NoMemory();
    }
    Py_RETURN_NONE;
}

static PyObject *summary_add_reading(SummaryObject *self, PyObject *args) {
    int partition;
    long long offset, stamp_us;
    const char *sensor;
    Py_ssize_t sensor_len;
    double t, h;
    if (!PyArg_ParseTuple(args, "iLs#Ldd", &partition, &offset, &sensor, &sensor_len, &stamp_us, &t, &h)) return NULL;
    uint8_t id[16];
    if (!parse_uuid((const uint8_t *)sensor, (size_t)sensor_len, id))
        return PyErr_Format(PyExc_ValueError, "not a UUID: %s", sensor);
    int seq = partition_seq(self, partition);
    if (seq < 0 || !summary_add_one(self, id, partition, seq, offset, stamp_us, t, h) ||
        !summary_note_day(self, floor_div(stamp_us, US_PER_DAY)))
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}


static int write_bucket(Buffer *out, const uint8_t id[16], const Bucket *b) {
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

/* rollup_stage rows: by minute (seconds=60) or merged into hours (seconds=3600, rollups.coarser). */
static PyObject *summary_rollup_copy(SummaryObject *self, PyObject *args) {
    int seconds;
    if (!PyArg_ParseTuple(args, "i", &seconds)) return NULL;
    if (seconds != 60 && seconds != 3600) return PyErr_Format(PyExc_ValueError, "seconds must be 60 or 3600");
    Buffer out = {0};
    PyObject *result = NULL;
    if (seconds == 60) {
        for (size_t i = 0; i < self->n_buckets; i++)
            if (!write_bucket(&out, self->sensors[self->buckets[i].sensor].id, &self->buckets[i])) goto oom;
    } else {
        SummaryObject hours = {0};
        for (size_t i = 0; i < self->n_buckets; i++) {
            const Bucket *m = &self->buckets[i];
            int created;
            Bucket *b = bucket_of(&hours, m->sensor, m->bucket_us - (m->bucket_us % 3600000000LL), &created);
            if (!b) {
                PyMem_Free(hours.buckets);
                PyMem_Free(hours.bucket_index.slots);
                goto oom;
            }
            if (created) {
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
        int ok = 1;
        for (size_t i = 0; i < hours.n_buckets && ok; i++)
            ok = write_bucket(&out, self->sensors[hours.buckets[i].sensor].id, &hours.buckets[i]);
        PyMem_Free(hours.buckets);
        PyMem_Free(hours.bucket_index.slots);
        if (!ok) goto oom;
    }
    result = PyBytes_FromStringAndSize(out.data ? out.data : "", (Py_ssize_t)out.len);
    buffer_free(&out);
    return result;
oom:
    buffer_free(&out);
    return PyErr_NoMemory();
}

static PyObject *sensor_text(const uint8_t id[16]) {
    char text[36];
    put_uuid(text, id);
    return PyUnicode_FromStringAndSize(text, 36);
}

/* [(sensor, t_min, t_max, h_min, h_max, newest_us, newest_partition)] */
static PyObject *summary_sensors(SummaryObject *self, PyObject *unused) {
    PyObject *list = PyList_New((Py_ssize_t)self->n_sensors);
    if (!list) return NULL;
    for (size_t i = 0; i < self->n_sensors; i++) {
        Sensor *e = &self->sensors[i];
        PyObject *id = sensor_text(e->id);
        PyObject *item = id ? Py_BuildValue("(NddddLi)", id, e->t_min, e->t_max, e->h_min, e->h_max,
                                            (long long)e->newest_us, e->newest_partition)
                            : NULL;
        if (!item) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
    }
    return list;
}

static int row_order(const void *a, const void *b) {
    const SummaryRow *x = *(SummaryRow *const *)a, *y = *(SummaryRow *const *)b;
    if (x->partition_seq != y->partition_seq) return x->partition_seq < y->partition_seq ? -1 : 1;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    return 0;
}

/* The rows of the given sensors, in the order the Python path sees them: [(partition, sensor, stamp_us, t, h)] */
static PyObject *summary_readings_of(SummaryObject *self, PyObject *sensors) {
    PyObject *iter = PyObject_GetIter(sensors);
    if (!iter) return NULL;
    for (size_t i = 0; i < self->n_sensors; i++) self->sensors[i].selected = 0;
    PyObject *item;
    while ((item = PyIter_Next(iter))) {
        Py_ssize_t n;
        const char *text = PyUnicode_AsUTF8AndSize(item, &n);
        uint8_t id[16];
        if (text && parse_uuid((const uint8_t *)text, (size_t)n, id) && self->sensor_index.cap) {
            size_t mask = self->sensor_index.cap - 1, slot = sensor_hash(id) & mask;
            uint32_t v;
            while ((v = self->sensor_index.slots[slot])) {
                if (memcmp(self->sensors[v - 1].id, id, 16) == 0) {
                    self->sensors[v - 1].selected = 1;
                    break;
                }
                slot = (slot + 1) & mask;
            }
        }
        Py_DECREF(item);
        if (!text) {
            Py_DECREF(iter);
            return NULL;
        }
    }
    Py_DECREF(iter);
    if (PyErr_Occurred()) return NULL;
    size_t n = 0;
    SummaryRow **picked = PyMem_Malloc((self->n_rows ? self->n_rows : 1) * sizeof(SummaryRow *));
    if (!picked) return PyErr_NoMemory();
    for (size_t i = 0; i < self->n_rows; i++)
        if (self->sensors[self->rows[i].sensor].selected) picked[n++] = &self->rows[i];
    if (self->out_of_order) qsort(picked, n, sizeof(SummaryRow *), row_order);
    PyObject *list = PyList_New((Py_ssize_t)n);
    PyObject **names = PyMem_Calloc(self->n_sensors ? self->n_sensors : 1, sizeof(PyObject *));
    if (!list || !names) {
        Py_XDECREF(list);
        PyMem_Free(names);
        PyMem_Free(picked);
        return PyErr_NoMemory();
    }
    for (size_t i = 0; i < n; i++) {
        SummaryRow *r = picked[i];
        if (!names[r->sensor]) names[r->sensor] = sensor_text(self->sensors[r->sensor].id);
        PyObject *tuple = names[r->sensor] ? Py_BuildValue("(iOLdd)", r->partition, names[r->sensor],
                                                           (long long)r->stamp_us, r->t, r->h)
                                           : NULL;
        if (!tuple) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, tuple);
    }
    for (size_t i = 0; i < self->n_sensors; i++) Py_XDECREF(names[i]);
    PyMem_Free(names);
    PyMem_Free(picked);
    return list;
}

static PyObject *summary_days(SummaryObject *self, PyObject *unused) {
    PyObject *list = PyList_New(self->n_days);
    if (!list) return NULL;
    for (int i = 0; i < self->n_days; i++) {
        PyObject *v = PyLong_FromLongLong(self->days[i]);
        if (!v) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, v);
    }
    return list;
}

/* [(partition, newest stamp_us)]: each partition's clock (alerts) */
static PyObject *summary_clocks(SummaryObject *self, PyObject *unused) {
    PyObject *list = PyList_New(self->n_partitions);
    if (!list) return NULL;
    for (int i = 0; i < self->n_partitions; i++) {
        PyObject *v = Py_BuildValue("(iL)", self->partitions[i], (long long)self->partition_newest[i]);
        if (!v) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, v);
    }
    return list;
}

static void summary_dealloc(SummaryObject *self) {
    PyMem_Free(self->sensors);
    PyMem_Free(self->sensor_index.slots);
    PyMem_Free(self->buckets);
    PyMem_Free(self->bucket_index.slots);
    PyMem_Free(self->rows);
    PyMem_Free(self->partitions);
    PyMem_Free(self->partition_newest);
    PyMem_Free(self->days);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *summary_get_rows(SummaryObject *self, void *c) { return PyLong_FromSize_t(self->n_rows); }
static PyObject *summary_get_buckets(SummaryObject *self, void *c) { return PyLong_FromSize_t(self->n_buckets); }
static PyObject *summary_get_probes(SummaryObject *self, void *c) { return PyLong_FromUnsignedLongLong(self->probes); }

static PyGetSetDef summary_getset[] = {
    {"rows", (getter)summary_get_rows, NULL, "readings added", NULL},
    {"buckets", (getter)summary_get_buckets, NULL, "sensor-minute buckets", NULL},
    {"probes", (getter)summary_get_probes, NULL, "hash-table slots looked at beyond the first", NULL},
    {NULL},
};

static PyMethodDef summary_methods[] = {
    {"add", (PyCFunction)summary_add, METH_VARARGS, "add(rows, partition): the valid readings of one take"},
    {"add_reading", (PyCFunction)summary_add_reading, METH_VARARGS,
     "add_reading(partition, offset, sensor, stamp_us, t, h): one reading validated in Python"},
    {"rollup_copy", (PyCFunction)summary_rollup_copy, METH_VARARGS,
     "rollup_copy(seconds): rollup_stage rows in COPY text, per minute (60) or hour (3600)"},
    {"sensors", (PyCFunction)summary_sensors, METH_NOARGS,
     "[(sensor, t_min, t_max, h_min, h_max, newest_us, newest_partition)]"},
    {"readings_of", (PyCFunction)summary_readings_of, METH_O,
     "readings_of(sensors): [(partition, sensor, stamp_us, t, h)] in partition then offset order"},
    {"clocks", (PyCFunction)summary_clocks, METH_NOARGS, "[(partition, newest stamp_us)]"},
    {"days", (PyCFunction)summary_days, METH_NOARGS, "UTC days touched, as days since 1970-01-01"},
    {NULL},
};

static PyTypeObject SummaryType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "iot_fastpath.Summary",
    .tp_basicsize = sizeof(SummaryObject),
    .tp_dealloc = (destructor)summary_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "What one consumer batch derives from its readings: rollup buckets, ranges, alert inputs",
    .tp_new = PyType_GenericNew,
    .tp_getset = summary_getset,
    .tp_methods = summary_methods,
};

/* ------------------------------------------------------------------ module */
static PyObject *py_crc32c(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    uint32_t crc = crc32c(view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(crc);
}

static PyMethodDef module_methods[] = {
    {"crc32c", py_crc32c, METH_O, "CRC-32C of a bytes-like object"},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "iot_fastpath", "Native one-pass decoding of Kafka record batches into COPY rows.", -1,
    module_methods,
};

static int seed_hash_key(void) {
    PyObject *os = PyImport_ImportModule("os");
    PyObject *bytes = os ? PyObject_CallMethod(os, "urandom", "i", (int)sizeof(hash_key)) : NULL;
    Py_XDECREF(os);
    if (!bytes) return -1;
    memcpy(hash_key, PyBytes_AS_STRING(bytes), sizeof(hash_key));
    Py_DECREF(bytes);
    return 0;
}

PyMODINIT_FUNC PyInit_iot_fastpath(void) {
    crc32c_init();
    if (seed_hash_key() < 0) return NULL;
    if (PyType_Ready(&RowsType) < 0 || PyType_Ready(&CursorType) < 0 || PyType_Ready(&SummaryType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    CorruptBatch = PyErr_NewException("iot_fastpath.CorruptBatch", PyExc_ValueError, NULL);
    if (!CorruptBatch || PyModule_AddObjectRef(m, "CorruptBatch", CorruptBatch) < 0 ||
        PyModule_AddObjectRef(m, "Cursor", (PyObject *)&CursorType) < 0 ||
        PyModule_AddObjectRef(m, "Rows", (PyObject *)&RowsType) < 0 ||
        PyModule_AddObjectRef(m, "Summary", (PyObject *)&SummaryType) < 0 ||
        PyModule_AddStringConstant(m, "CRC_IMPLEMENTATION", crc32c_hardware_enabled() ? "sse4.2" : "table") < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
