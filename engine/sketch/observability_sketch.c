/*
 * The project's percentile sketch merge (rollup()'s final function) in C.
 *
 * The same result as the PL/pgSQL observability.sketch_merge_plpgsql in
 * sql/idempotent/012-sketch-speed.sql for every sketch the project writes; that function stays
 * the definition and the fallback where this library is not installed. Hand-made sketches that
 * break the type's rules are refused or read plainly here (docs/rollups.md lists how).
 * sql/idempotent/013-sketch-merge-in-c.sql points observability.sketch_merge here when the
 * server can load it. On the embedded engine, where PL/pgSQL and the sorts it calls run in
 * WASM, the per-group work of that function was most of a weekly rollup (docs/rollups.md).
 *
 * Inputs are sorted runs of keys (every sketch of more than 64 keys is stored sorted), so the
 * merge sorts only the small unsorted inputs and then merges the runs.
 */
#include "postgres.h"

#include <math.h>

#include "access/htup_details.h"
#include "catalog/pg_type_d.h"
#include "common/int.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/typcache.h"

PG_MODULE_MAGIC;

/* The limits of sql/idempotent/012-sketch-speed.sql: small_limit and sketch_stays_unit. */
#define SMALL_LIMIT 64
#define UNIT_MAX_VALUES 8192
#define UNIT_MAX_VALUES_PER_KEY 16

#define FIELD_N 0
#define FIELD_MIN 1
#define FIELD_MAX 2
#define FIELD_KEYS 3
#define FIELD_COUNTS 4
#define FIELDS 5

typedef struct Pair
{
	int32		key;
	int64		count;
} Pair;

/* One input sketch, as read from its composite value. */
typedef struct Input
{
	int64		n;
	int32	   *keys;
	int			nkeys;
	int64	   *counts;			/* NULL in the unit form without counts */
	int			ncounts;
} Input;

static int64
add_count(int64 a, int64 b)
{
	int64		sum;

	if (pg_add_s64_overflow(a, b, &sum))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("bigint out of range")));
	return sum;
}

static ArrayType *
array_of(Oid elemtype, int elemsize, const void *data, int n)
{
	Size		size;
	ArrayType  *a;

	if (n == 0)
		return construct_empty_array(elemtype);
	size = ARR_OVERHEAD_NONULLS(1) + (Size) elemsize * n;
	a = (ArrayType *) palloc0(size);
	SET_VARSIZE(a, size);
	a->ndim = 1;
	a->dataoffset = 0;
	a->elemtype = elemtype;
	*ARR_DIMS(a) = n;
	*ARR_LBOUND(a) = 1;
	memcpy(ARR_DATA_PTR(a), data, (Size) elemsize * n);
	return a;
}

/* The elements of a one-dimensional array without NULLs; the caller checks the type. */
static void *
array_elements(Datum d, Oid elemtype, int *n)
{
	ArrayType  *a = DatumGetArrayTypeP(d);

	if (ARR_ELEMTYPE(a) != elemtype)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("a percentile sketch's array has element type %s, expected %s",
						format_type_be(ARR_ELEMTYPE(a)), format_type_be(elemtype))));
	if (array_contains_nulls(a))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("a percentile sketch's keys and counts must not contain NULL")));
	*n = ArrayGetNItems(ARR_NDIM(a), ARR_DIMS(a));
	return ARR_DATA_PTR(a);
}

static bool
keys_sorted(const int32 *k, int n)
{
	for (int i = 1; i < n; i++)
		if (k[i] < k[i - 1])
			return false;
	return true;
}

static bool
pairs_sorted(const Pair *p, int n)
{
	for (int i = 1; i < n; i++)
		if (p[i].key < p[i - 1].key)
			return false;
	return true;
}

static int
compare_keys(const void *a, const void *b)
{
	int32		x = *(const int32 *) a;
	int32		y = *(const int32 *) b;

	return (x > y) - (x < y);
}

static int
compare_pairs(const void *a, const void *b)
{
	return compare_keys(&((const Pair *) a)->key, &((const Pair *) b)->key);
}

/*
 * Sorts v, made of the sorted runs that start at starts[0..runs-1] (starts[runs] = its length),
 * by merging neighbouring runs until one is left. tmp holds as many elements as v.
 */
#define MERGE_RUNS(NAME, T, KEY) \
static T * \
NAME(T *v, T *tmp, int *starts, int runs) \
{ \
	while (runs > 1) \
	{ \
		int			out = 0; \
		CHECK_FOR_INTERRUPTS(); \
		for (int r = 0; r < runs; r += 2) \
		{ \
			int			i = starts[r]; \
			int			mid = starts[r + 1]; \
			int			end = r + 2 <= runs ? starts[r + 2] : mid; \
			int			j = mid; \
			int			o = i; \
			while (i < mid && j < end) \
				tmp[o++] = KEY(v[j]) < KEY(v[i]) ? v[j++] : v[i++]; \
			while (i < mid) \
				tmp[o++] = v[i++]; \
			while (j < end) \
				tmp[o++] = v[j++]; \
			starts[out++] = starts[r]; \
		} \
		starts[out] = starts[runs]; \
		runs = out; \
		{ \
			T		   *swap = v; \
			v = tmp; \
			tmp = swap; \
		} \
	} \
	return v; \
}

#define KEY_OF_KEY(x) (x)
#define KEY_OF_PAIR(x) ((x).key)
MERGE_RUNS(merge_key_runs, int32, KEY_OF_KEY)
MERGE_RUNS(merge_pair_runs, Pair, KEY_OF_PAIR)

/*
 * The least minimum and greatest maximum of the inputs, as PostgreSQL orders float8 (NaN above
 * every number, -0 equal to 0), skipping NULLs. Of equal values least() and greatest() keep the
 * first, the min() and max() aggregates of sketch_combine the last: both are kept, so the
 * sketch holds the same -0 or 0 as the PL/pgSQL merge.
 */
typedef struct Range
{
	bool		has_lo;
	bool		has_hi;
	float8		lo;
	float8		hi;
} Range;

typedef struct Ranges
{
	Range		first;			/* least() and greatest() */
	Range		last;			/* min() and max() */
} Ranges;

static int
compare_float8(float8 a, float8 b)
{
	if (isnan(a))
		return isnan(b) ? 0 : 1;
	if (isnan(b))
		return -1;
	return (a > b) - (a < b);
}

static void
widen(Ranges *r, bool lo_null, float8 lo, bool hi_null, float8 hi)
{
	if (!lo_null)
	{
		if (!r->first.has_lo || compare_float8(lo, r->first.lo) < 0)
			r->first.lo = lo;
		if (!r->last.has_lo || compare_float8(lo, r->last.lo) <= 0)
			r->last.lo = lo;
		r->first.has_lo = r->last.has_lo = true;
	}
	if (!hi_null)
	{
		if (!r->first.has_hi || compare_float8(hi, r->first.hi) > 0)
			r->first.hi = hi;
		if (!r->last.has_hi || compare_float8(hi, r->last.hi) >= 0)
			r->last.hi = hi;
		r->first.has_hi = r->last.has_hi = true;
	}
}

static Datum
sketch_datum(TupleDesc desc, int64 n, const Range *range, ArrayType *keys, ArrayType *counts)
{
	Datum		values[FIELDS];
	bool		nulls[FIELDS] = {false, !range->has_lo, !range->has_hi, false, false};

	values[FIELD_N] = Int64GetDatum(n);
	values[FIELD_MIN] = range->has_lo ? Float8GetDatum(range->lo) : (Datum) 0;
	values[FIELD_MAX] = range->has_hi ? Float8GetDatum(range->hi) : (Datum) 0;
	values[FIELD_KEYS] = PointerGetDatum(keys);
	values[FIELD_COUNTS] = PointerGetDatum(counts);
	return HeapTupleGetDatum(heap_form_tuple(desc, values, nulls));
}

/*
 * All inputs in the unit form: up to 64 keys in all, side by side and unsorted; otherwise
 * sorted, then kept or counted as sketch_from_sorted_keys decides (a STRICT function: without
 * a minimum or a maximum, no sketch).
 */
static Datum
merge_unit(TupleDesc desc, const Input *in, int inputs, int64 total, const Range *range,
		   bool *isnull)
{
	int32	   *keys = palloc(sizeof(int32) * total);
	int		   *starts = palloc(sizeof(int) * (inputs + 1));
	int			runs = 0;
	int			at = 0;
	int			distinct = 0;
	int32	   *sorted;

	for (int s = 0; s < inputs; s++)
	{
		if (in[s].nkeys == 0)
			continue;
		memcpy(keys + at, in[s].keys, sizeof(int32) * in[s].nkeys);
		starts[runs++] = at;
		at += in[s].nkeys;
	}
	starts[runs] = at;
	if (total <= SMALL_LIMIT)
		return sketch_datum(desc, total, range, array_of(INT4OID, sizeof(int32), keys, at),
							construct_empty_array(INT8OID));
	if (!range->has_lo || !range->has_hi)
	{
		*isnull = true;
		return (Datum) 0;
	}
	for (int r = 0; r < runs; r++)
		if (!keys_sorted(keys + starts[r], starts[r + 1] - starts[r]))
			pg_qsort(keys + starts[r], starts[r + 1] - starts[r], sizeof(int32), compare_keys);
	sorted = merge_key_runs(keys, palloc(sizeof(int32) * total), starts, runs);
	for (int i = 0; i < at; i++)
		distinct += i == 0 || sorted[i] != sorted[i - 1];
	if (at <= UNIT_MAX_VALUES && at <= (int64) UNIT_MAX_VALUES_PER_KEY * distinct)
		return sketch_datum(desc, at, range, array_of(INT4OID, sizeof(int32), sorted, at),
							construct_empty_array(INT8OID));
	{
		int32	   *dk = palloc(sizeof(int32) * distinct);
		int64	   *dc = palloc(sizeof(int64) * distinct);
		int			d = -1;

		for (int i = 0; i < at; i++)
		{
			if (i == 0 || sorted[i] != sorted[i - 1])
			{
				dk[++d] = sorted[i];
				dc[d] = 0;
			}
			dc[d]++;
		}
		return sketch_datum(desc, at, range, array_of(INT4OID, sizeof(int32), dk, distinct),
							array_of(INT8OID, sizeof(int64), dc, distinct));
	}
}

/*
 * Any other merge: every input's pairs (a unit-form key without counts counts one), side by
 * side while there are at most 64 keys in all, otherwise summed per key in key order, as
 * sketch_combine does.
 */
static Datum
merge_pairs(TupleDesc desc, const Input *in, int inputs, int64 total, int nkeys,
			const Ranges *ranges)
{
	Pair	   *pairs = palloc(sizeof(Pair) * nkeys);
	int		   *starts = palloc(sizeof(int) * (inputs + 1));
	int32	   *ks = palloc(sizeof(int32) * nkeys);
	int64	   *cs = palloc(sizeof(int64) * nkeys);
	int			runs = 0;
	int			at = 0;
	int			out = 0;
	int64		n = 0;
	Pair	   *sorted;

	for (int s = 0; s < inputs; s++)
	{
		CHECK_FOR_INTERRUPTS();
		if (in[s].nkeys == 0)
			continue;
		for (int i = 0; i < in[s].nkeys; i++)
		{
			pairs[at + i].key = in[s].keys[i];
			pairs[at + i].count = i < in[s].ncounts ? in[s].counts[i] : 1;
		}
		starts[runs++] = at;
		at += in[s].nkeys;
	}
	starts[runs] = at;
	if (nkeys <= SMALL_LIMIT)
	{
		for (int i = 0; i < at; i++)
		{
			ks[i] = pairs[i].key;
			cs[i] = pairs[i].count;
		}
		return sketch_datum(desc, total, &ranges->first, array_of(INT4OID, sizeof(int32), ks, at),
							array_of(INT8OID, sizeof(int64), cs, at));
	}
	for (int r = 0; r < runs; r++)
		if (!pairs_sorted(pairs + starts[r], starts[r + 1] - starts[r]))
			pg_qsort(pairs + starts[r], starts[r + 1] - starts[r], sizeof(Pair), compare_pairs);
	sorted = merge_pair_runs(pairs, palloc(sizeof(Pair) * nkeys), starts, runs);
	for (int i = 0; i < at; i++)
	{
		if (out > 0 && ks[out - 1] == sorted[i].key)
			cs[out - 1] = add_count(cs[out - 1], sorted[i].count);
		else
		{
			ks[out] = sorted[i].key;
			cs[out++] = sorted[i].count;
		}
		n = add_count(n, sorted[i].count);
	}
	return sketch_datum(desc, n, &ranges->last, array_of(INT4OID, sizeof(int32), ks, out),
						array_of(INT8OID, sizeof(int64), cs, out));
}

/*
 * The row type of the input array's elements. Its fields' types are checked where the function
 * is created (sql/idempotent/013-sketch-merge-in-c.sql), not here: pg_attribute's struct, which
 * TupleDescAttr reads, differs between the PostgreSQL versions the WASM build spans
 * (engine/sketch/Makefile), and the catalog functions that would read it are not all exported
 * by the embedded engine. A type in use by a table cannot change its fields' types.
 */
static TupleDesc
sketch_tupdesc(Oid sketch_type)
{
	TupleDesc	desc = lookup_rowtype_tupdesc(sketch_type, -1);

	if (desc->natts != FIELDS)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("%s is not laid out as a percentile sketch", format_type_be(sketch_type)),
				 errdetail("Expected (n bigint, min_value float8, max_value float8,"
						   " keys integer[], counts bigint[]).")));
	return desc;
}

/*
 * Reads one sketch into s; false for a sketch without n, which the merge skips. A sketch without
 * counts (NULL or '{}') counts one value a key; otherwise it has a count for every key.
 */
static bool
read_sketch(TupleDesc desc, Datum element, Input *s, bool *lo_null, float8 *lo, bool *hi_null,
			float8 *hi)
{
	HeapTupleHeader th = (HeapTupleHeader) PG_DETOAST_DATUM(element);
	HeapTupleData tuple;
	Datum		values[FIELDS];
	bool		nulls[FIELDS];

	tuple.t_len = HeapTupleHeaderGetDatumLength(th);
	ItemPointerSetInvalid(&tuple.t_self);
	tuple.t_tableOid = InvalidOid;
	tuple.t_data = th;
	heap_deform_tuple(&tuple, desc, values, nulls);
	if (nulls[FIELD_N])
		return false;
	s->n = DatumGetInt64(values[FIELD_N]);
	if (nulls[FIELD_KEYS])
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("a percentile sketch of %lld values has no keys", (long long) s->n)));
	s->keys = array_elements(values[FIELD_KEYS], INT4OID, &s->nkeys);
	s->counts = NULL;
	s->ncounts = 0;
	if (!nulls[FIELD_COUNTS])
		s->counts = array_elements(values[FIELD_COUNTS], INT8OID, &s->ncounts);
	if (s->ncounts != 0 && s->ncounts != s->nkeys)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a percentile sketch has %d keys but %d counts", s->nkeys, s->ncounts)));
	*lo_null = nulls[FIELD_MIN];
	*lo = *lo_null ? 0 : DatumGetFloat8(values[FIELD_MIN]);
	*hi_null = nulls[FIELD_MAX];
	*hi = *hi_null ? 0 : DatumGetFloat8(values[FIELD_MAX]);
	return true;
}

PG_FUNCTION_INFO_V1(sketch_merge);

Datum
sketch_merge(PG_FUNCTION_ARGS)
{
	ArrayType  *sketches;
	Oid			sketch_type;
	TupleDesc	desc;
	Datum	   *elements;
	bool	   *element_nulls;
	int			count;
	Input	   *in;
	int			inputs = 0;
	int64		total = 0;
	int64		nkeys = 0;
	Ranges		ranges = {{false, false, 0, 0}, {false, false, 0, 0}};
	bool		unit = true;
	bool		isnull = false;
	Datum		result;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	sketches = PG_GETARG_ARRAYTYPE_P(0);
	sketch_type = ARR_ELEMTYPE(sketches);
	deconstruct_array(sketches, sketch_type, -1, false, TYPALIGN_DOUBLE,
					  &elements, &element_nulls, &count);
	if (count == 1)
	{
		if (element_nulls[0])
			PG_RETURN_NULL();
		PG_RETURN_DATUM(elements[0]);
	}
	desc = sketch_tupdesc(sketch_type);
	in = palloc(sizeof(Input) * (count > 0 ? count : 1));
	for (int e = 0; e < count; e++)
	{
		bool		lo_null;
		bool		hi_null;
		float8		lo;
		float8		hi;

		CHECK_FOR_INTERRUPTS();
		if (element_nulls[e]
			|| !read_sketch(desc, elements[e], &in[inputs], &lo_null, &lo, &hi_null, &hi))
			continue;
		total = add_count(total, in[inputs].n);
		nkeys += in[inputs].nkeys;
		unit = unit && in[inputs].n == in[inputs].nkeys;
		widen(&ranges, lo_null, lo, hi_null, hi);
		inputs++;
	}
	if (nkeys > (int64) (MaxAllocSize / sizeof(Pair)))
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("cannot merge percentile sketches holding %lld keys in all",
						(long long) nkeys)));
	if (total == 0)
		result = (Datum) 0, isnull = true;
	else if (unit)
		result = merge_unit(desc, in, inputs, total, &ranges.first, &isnull);
	else
		result = merge_pairs(desc, in, inputs, total, (int) nkeys, &ranges);
	ReleaseTupleDesc(desc);
	if (isnull)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(result);
}
