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
 * Everything that does not touch Python objects is a plain C unit in lib/, each with its own
 * header: crc32c (CRC-32C), wire (big-endian integers, varints), record_batch (batch and record
 * framing), reading (the strict reading parser), copy_text and copy_row (COPY text writers),
 * copy_binary (the same row in COPY BINARY, for Cursor.take(..., binary=True)),
 * summary (the batch summary's hash tables), calendar. A C test driver (tests/driver.c) runs
 * them under AddressSanitizer and UBSan; this file only binds them: arguments, the GIL, and
 * the Python objects going in and out. The Python side (iot_consumer.decoding / batch / rollups) is the
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
#include "copy_binary.h"
#include "copy_row.h"
#include "copy_text.h"
#include "crc32c.h"
#include "reading.h"
#include "record_batch.h"
#include "summary.h"

/* ------------------------------------------------------------------ Rows: one take's valid readings */
typedef struct {
    uint8_t sensor[16];
    int64_t offset;
    int64_t stamp_us;
    double t, h;
} Row;

typedef struct {
    PyObject_HEAD
    PyObject *copy; /* bytes: the rows in COPY text format, or COPY BINARY rows (no header) */
    int binary;
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
static PyObject *rows_get_binary(RowsObject *self, void *closure) { return PyBool_FromLong(self->binary); }
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
    {"copy", (getter)rows_get_copy, NULL, "the rows of sensores in COPY text format (or binary rows: see binary)", NULL},
    {"binary", (getter)rows_get_binary, NULL, "True: copy holds COPY BINARY rows, without the stream's header", NULL},
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
    /* decompress(codec, compressed bytes) -> bytes: kafka-python's own codecs (decoding.py);
       None: compressed batches are left to kafka-python's decoder */
    PyObject *decompress; /* a plain function (the type is not GC-tracked: no cycles through it) */
    PyObject *inflated; /* the last compressed batch's records, decompressed (kept until the next) */
} CursorObject;

static int cursor_init(CursorObject *self, PyObject *args, PyObject *kwds) {
    PyObject *buffer, *decompress = Py_None;
    long long fetch_offset;
    static char *kwlist[] = {"buffer", "fetch_offset", "decompress", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OL|$O", kwlist, &buffer, &fetch_offset, &decompress)) return -1;
    if (decompress != Py_None && !PyCallable_Check(decompress)) {
        PyErr_SetString(PyExc_TypeError, "decompress must be callable or None");
        return -1;
    }
    Py_XSETREF(self->decompress, decompress == Py_None ? NULL : Py_NewRef(decompress));
    Py_CLEAR(self->inflated);
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
    Py_XDECREF(self->decompress);
    Py_XDECREF(self->inflated);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Fallback record: (offset, timestamp, timestamp_type, key, value, headers, size_in_bytes). */
static PyObject *fallback_record(CursorObject *c, int64_t offset, const RecordFrame *rf, Py_ssize_t size) {
    /* Headers are skipped, not built: the consumer never reads them, and a record may carry
       hundreds of thousands (each would be a tuple) with keys of any bytes. */
    int64_t ts_delta = rf->ts_delta, key_len = rf->key_len, value_len = rf->value_len;
    const uint8_t *key = rf->key, *value = rf->value;
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

static PyObject *cursor_take(CursorObject *self, PyObject *args, PyObject *kwds) {
    Py_ssize_t max_records;
    long partition;
    Limits lim;
    long long earliest, latest;
    Py_ssize_t max_payload;
    int binary = 0;
    static char *kwlist[] = {"max_records", "partition", "t_min", "t_max", "h_min", "h_max",
                             "max_payload", "earliest_us", "latest_us", "binary", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nlddddnLL|$p", kwlist, &max_records, &partition, &lim.t_min,
                                     &lim.t_max, &lim.h_min, &lim.h_max, &max_payload, &earliest, &latest, &binary))
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
            BatchFrame f;
            self->batch_start = self->pos;
            BatchStatus framed = batch_frame(buf + self->pos, (size_t)(buf_len - self->pos), &f);
            if (framed == BATCH_INCOMPLETE) goto finished; /* kafka-python ignores a partial trailing batch */
            if (framed == BATCH_OTHER_FORMAT || (framed == BATCH_COMPRESSED && !self->decompress)) {
                status = "python"; /* kafka-python decodes those */
                goto done;
            }
            if (framed == BATCH_CORRUPT) {
                HOLD_GIL();
                error = PyUnicode_FromFormat("Record batch for partition %ld at offset %lld%s", partition,
                                             (long long)f.base_offset, f.error);
                break;
            }
            if (framed == BATCH_COMPRESSED && !f.control) {
                /* One Python call per batch (kafka-python's codecs); its records are parsed here. */
                HOLD_GIL();
                PyObject *inflated = PyObject_CallFunction(self->decompress, "iy#", f.codec, (const char *)f.records,
                                                           (Py_ssize_t)(f.end - f.records));
                if (inflated && !PyBytes_Check(inflated)) {
                    Py_SETREF(inflated, NULL);
                    PyErr_SetString(PyExc_TypeError, "decompress returned no bytes");
                }
                if (!inflated && !PyErr_ExceptionMatches(PyExc_Exception)) goto fail; /* KeyboardInterrupt, ... */
                if (!inflated) {
                    /* The codec refused the bytes, or is not installed: kafka-python fails on this
                       batch alike. CorruptBatch carries the codec's own exception (decoding.py
                       reports that, as the Python path does). */
                    PyObject *type, *value, *traceback;
                    PyErr_Fetch(&type, &value, &traceback);
                    PyErr_NormalizeException(&type, &value, &traceback);
                    error = value ? value : PyUnicode_FromString("decompression failed");
                    Py_XDECREF(type);
                    Py_XDECREF(traceback);
                    break;
                }
                Py_XSETREF(self->inflated, inflated);
                f.records = (const uint8_t *)PyBytes_AS_STRING(inflated);
                f.end = f.records + PyBytes_GET_SIZE(inflated);
                RELEASE_GIL();
            }
            self->base_offset = f.base_offset;
            self->leader_epoch = f.leader_epoch;
            self->batch_next_offset = f.next_offset;
            self->last_batch_next_offset = f.next_offset;
            self->pos += (Py_ssize_t)f.size;
            if (f.control) { /* a transaction's commit/abort marker: never returned */
                self->next_fetch_offset = f.next_offset;
                continue;
            }
            self->log_append_time = f.log_append_time;
            self->base_ts = f.base_ts;
            self->max_ts = f.max_ts;
            self->remaining = f.record_count;
            self->rec = f.records;
            self->batch_end = f.end;
            self->in_batch = 1;
        }
        if (self->remaining <= 0) {
            if (self->rec != self->batch_end) {
                HOLD_GIL();
                error = PyUnicode_FromFormat("Record batch for partition %ld at offset %lld: unconsumed bytes after all records",
                                partition, (long long)self->base_offset);
                break;
            }
            self->in_batch = 0;
            continue;
        }
        /* one record */
        const uint8_t *p = self->rec;
        RecordFrame rf;
        if (!record_frame(&p, self->batch_end, &rf)) goto bad_record;
        const uint8_t *rec_end = rf.end;
        self->rec = rec_end;
        self->remaining--;
        int64_t offset;
        if (__builtin_add_overflow(self->base_offset, rf.offset_delta, &offset)) goto bad_record;
        if (offset < self->fetch_offset) continue; /* before the position: a batch fetched whole */
        Py_ssize_t size = (Py_ssize_t)(rec_end - rf.begin);
        self->records_read++;
        self->bytes_read += size;
        self->next_fetch_offset = offset + 1;
        taken++;
        Parsed r;
        last_is_row = rf.value_len > 0 && parse_reading(rf.value, rf.value_len, &lim, &r);
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
            if (!(binary ? put_reading_row_binary(&out, &r, partition, offset)
                         : put_reading_row(&out, &r, partition, offset))) {
                HOLD_GIL();
                PyErr_NoMemory();
                goto fail;
            }
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
            PyObject *record = fallback_record(self, offset, &rf, size);
            if (!record || PyList_Append(fallbacks, record) < 0) { Py_XDECREF(record); goto fail; }
            Py_DECREF(record);
            RELEASE_GIL();
        }
        continue;
    bad_record:
        HOLD_GIL();
        error = PyUnicode_FromFormat("Record batch for partition %ld at offset %lld holds a malformed record",
                                     partition, (long long)self->base_offset);
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
        result->binary = binary;
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
     "take(max_records, partition, t_min, t_max, h_min, h_max, max_payload, earliest_us, latest_us, *, binary=False)"
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
/* The binding of lib/summary.h: Python in, Python out. */
typedef struct {
    PyObject_HEAD
    Summary core;
} SummaryObject;

static PyObject *summary_py_add(SummaryObject *self, PyObject *args) {
    RowsObject *rows;
    int partition;
    if (!PyArg_ParseTuple(args, "O!i", &RowsType, &rows, &partition)) return NULL;
    Summary *s = &self->core;
    int seq = summary_partition(s, partition);
    if (seq < 0) return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < rows->n; i++) {
        Row *r = &rows->rows[i];
        if (!summary_add_at(s, r->sensor, partition, seq, r->offset, r->stamp_us, r->t, r->h)) return PyErr_NoMemory();
    }
    if (rows->overflow_days) { /* more distinct days than a Rows keeps: from the rows themselves */
        for (Py_ssize_t i = 0; i < rows->n; i++)
            if (!summary_note_day(s, floor_div(rows->rows[i].stamp_us, US_PER_DAY))) return PyErr_NoMemory();
    } else {
        for (int i = 0; i < rows->n_days; i++)
            if (!summary_note_day(s, rows->days[i])) return PyErr_NoMemory();
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
    if (!summary_add(&self->core, id, partition, offset, stamp_us, t, h)) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *summary_py_rollup_copy(SummaryObject *self, PyObject *args) {
    int seconds;
    if (!PyArg_ParseTuple(args, "i", &seconds)) return NULL;
    Buffer out = {0};
    int written = summary_rollup_copy(&self->core, seconds, &out);
    if (written < 0) return PyErr_Format(PyExc_ValueError, "seconds must be 60 or 3600");
    PyObject *result = written ? PyBytes_FromStringAndSize(out.data ? out.data : "", (Py_ssize_t)out.len)
                               : PyErr_NoMemory();
    buffer_free(&out);
    return result;
}

static PyObject *sensor_text(const uint8_t id[16]) {
    char text[36];
    put_uuid(text, id);
    return PyUnicode_FromStringAndSize(text, 36);
}

/* [(sensor, t_min, t_max, h_min, h_max, newest_us, newest_partition)] */
static PyObject *summary_sensors(SummaryObject *self, PyObject *unused) {
    const Summary *s = &self->core;
    PyObject *list = PyList_New((Py_ssize_t)s->n_sensors);
    if (!list) return NULL;
    for (size_t i = 0; i < s->n_sensors; i++) {
        const SummarySensor *e = &s->sensors[i];
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

/* The rows of the given sensors, in the order the Python path sees them: [(partition, sensor, stamp_us, t, h)] */
static PyObject *summary_readings_of(SummaryObject *self, PyObject *sensors) {
    Summary *s = &self->core;
    PyObject *iter = PyObject_GetIter(sensors);
    if (!iter) return NULL;
    for (size_t i = 0; i < s->n_sensors; i++) s->sensors[i].selected = 0;
    PyObject *item;
    while ((item = PyIter_Next(iter))) {
        Py_ssize_t n;
        const char *text = PyUnicode_AsUTF8AndSize(item, &n);
        uint8_t id[16];
        long found = text && parse_uuid((const uint8_t *)text, (size_t)n, id) ? summary_find(s, id) : -1;
        if (found >= 0) s->sensors[found].selected = 1;
        Py_DECREF(item);
        if (!text) {
            Py_DECREF(iter);
            return NULL;
        }
    }
    Py_DECREF(iter);
    if (PyErr_Occurred()) return NULL;
    const SummaryRow **picked = PyMem_Malloc((s->n_rows ? s->n_rows : 1) * sizeof(SummaryRow *));
    PyObject **names = PyMem_Calloc(s->n_sensors ? s->n_sensors : 1, sizeof(PyObject *));
    PyObject *list = NULL;
    if (picked && names) {
        size_t n = summary_selected_rows(s, picked);
        list = PyList_New((Py_ssize_t)n);
        for (size_t i = 0; list && i < n; i++) {
            const SummaryRow *r = picked[i];
            if (!names[r->sensor]) names[r->sensor] = sensor_text(s->sensors[r->sensor].id);
            PyObject *tuple = names[r->sensor] ? Py_BuildValue("(iOLdd)", r->partition, names[r->sensor],
                                                               (long long)r->stamp_us, r->t, r->h)
                                               : NULL;
            if (!tuple) {
                Py_CLEAR(list);
                break;
            }
            PyList_SET_ITEM(list, (Py_ssize_t)i, tuple);
        }
    } else {
        PyErr_NoMemory();
    }
    if (names)
        for (size_t i = 0; i < s->n_sensors; i++) Py_XDECREF(names[i]);
    PyMem_Free(names);
    PyMem_Free(picked);
    return list;
}

static PyObject *summary_days(SummaryObject *self, PyObject *unused) {
    const Summary *s = &self->core;
    PyObject *list = PyList_New(s->n_days);
    if (!list) return NULL;
    for (int i = 0; i < s->n_days; i++) {
        PyObject *v = PyLong_FromLongLong(s->days[i]);
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
    const Summary *s = &self->core;
    PyObject *list = PyList_New(s->n_partitions);
    if (!list) return NULL;
    for (int i = 0; i < s->n_partitions; i++) {
        PyObject *v = Py_BuildValue("(iL)", s->partitions[i], (long long)s->partition_newest[i]);
        if (!v) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, v);
    }
    return list;
}

static void summary_dealloc(SummaryObject *self) {
    summary_free(&self->core);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *summary_get_rows(SummaryObject *self, void *c) { return PyLong_FromSize_t(self->core.n_rows); }
static PyObject *summary_get_buckets(SummaryObject *self, void *c) { return PyLong_FromSize_t(self->core.n_buckets); }
static PyObject *summary_get_probes(SummaryObject *self, void *c) {
    return PyLong_FromUnsignedLongLong(self->core.probes);
}

static PyGetSetDef summary_getset[] = {
    {"rows", (getter)summary_get_rows, NULL, "readings added", NULL},
    {"buckets", (getter)summary_get_buckets, NULL, "sensor-minute buckets", NULL},
    {"probes", (getter)summary_get_probes, NULL, "hash-table slots looked at beyond the first", NULL},
    {NULL},
};

static PyMethodDef summary_methods[] = {
    {"add", (PyCFunction)summary_py_add, METH_VARARGS, "add(rows, partition): the valid readings of one take"},
    {"add_reading", (PyCFunction)summary_add_reading, METH_VARARGS,
     "add_reading(partition, offset, sensor, stamp_us, t, h): one reading validated in Python"},
    {"rollup_copy", (PyCFunction)summary_py_rollup_copy, METH_VARARGS,
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

/* The summary's hash key, random per process (lib/summary.h says why). */
static int seed_hash_key(void) {
    uint64_t key[2];
    PyObject *os = PyImport_ImportModule("os");
    PyObject *bytes = os ? PyObject_CallMethod(os, "urandom", "i", (int)sizeof(key)) : NULL;
    Py_XDECREF(os);
    if (!bytes) return -1;
    memcpy(key, PyBytes_AS_STRING(bytes), sizeof(key));
    Py_DECREF(bytes);
    summary_seed(key[0], key[1]);
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
