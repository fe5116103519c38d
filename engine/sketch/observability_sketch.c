/*
 * The project's percentile sketch merge (rollup()'s final function) in C.
 *
 * The same result as the PL/pgSQL observability.sketch_merge_plpgsql in
 * sql/idempotent/012-sketch-speed.sql, which stays the definition and the fallback where this
 * library is not installed: sql/idempotent/013-sketch-merge-in-c.sql points
 * observability.sketch_merge here when the server can load it. On the embedded engine, where
 * PL/pgSQL and the sorts it calls run in WASM, the per-group work of that function was most of
 * a weekly rollup (docs/rollups.md).
 *
 * Inputs are sorted runs of keys (every sketch of more than 64 keys is stored sorted), so the
 * merge sorts only the small unsorted inputs and then merges the runs.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type_d.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/array.h"
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
		elog(ERROR, "sketch array has element type %u, expected %u", ARR_ELEMTYPE(a), elemtype);
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

/* The least minimum and greatest maximum of the inputs; least() and greatest() skip NULLs. */
typedef struct Range
{
	bool		has_lo;
	bool		has_hi;
	float8		lo;
	float8		hi;
} Range;

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
			const Range *range)
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
		return sketch_datum(desc, total, range, array_of(INT4OID, sizeof(int32), ks, at),
							array_of(INT8OID, sizeof(int64), cs, at));
	}
	for (int r = 0; r < runs; r++)
		if (!pairs_sorted(pairs + starts[r], starts[r + 1] - starts[r]))
			pg_qsort(pairs + starts[r], starts[r + 1] - starts[r], sizeof(Pair), compare_pairs);
	sorted = merge_pair_runs(pairs, palloc(sizeof(Pair) * nkeys), starts, runs);
	for (int i = 0; i < at; i++)
	{
		if (out > 0 && ks[out - 1] == sorted[i].key)
			cs[out - 1] += sorted[i].count;
		else
		{
			ks[out] = sorted[i].key;
			cs[out++] = sorted[i].count;
		}
		n += sorted[i].count;
	}
	return sketch_datum(desc, n, range, array_of(INT4OID, sizeof(int32), ks, out),
						array_of(INT8OID, sizeof(int64), cs, out));
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
	Range		range = {false, false, 0, 0};
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
	desc = lookup_rowtype_tupdesc(sketch_type, -1);
	if (desc->natts != FIELDS)
		elog(ERROR, "type %u is not a percentile sketch", sketch_type);
	in = palloc(sizeof(Input) * (count > 0 ? count : 1));
	for (int e = 0; e < count; e++)
	{
		HeapTupleHeader th;
		HeapTupleData tuple;
		Datum		values[FIELDS];
		bool		nulls[FIELDS];
		Input	   *s = &in[inputs];

		if (element_nulls[e])
			continue;
		th = (HeapTupleHeader) PG_DETOAST_DATUM(elements[e]);
		tuple.t_len = HeapTupleHeaderGetDatumLength(th);
		ItemPointerSetInvalid(&tuple.t_self);
		tuple.t_tableOid = InvalidOid;
		tuple.t_data = th;
		heap_deform_tuple(&tuple, desc, values, nulls);
		if (nulls[FIELD_N])
			continue;
		s->n = DatumGetInt64(values[FIELD_N]);
		if (nulls[FIELD_KEYS] || nulls[FIELD_COUNTS])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("a percentile sketch of %lld values has no keys or no counts",
							(long long) s->n)));
		s->keys = array_elements(values[FIELD_KEYS], INT4OID, &s->nkeys);
		s->counts = array_elements(values[FIELD_COUNTS], INT8OID, &s->ncounts);
		total += s->n;
		nkeys += s->nkeys;
		unit = unit && s->n == s->nkeys;
		if (!nulls[FIELD_MIN])
		{
			float8		v = DatumGetFloat8(values[FIELD_MIN]);

			range.lo = range.has_lo && range.lo <= v ? range.lo : v;
			range.has_lo = true;
		}
		if (!nulls[FIELD_MAX])
		{
			float8		v = DatumGetFloat8(values[FIELD_MAX]);

			range.hi = range.has_hi && range.hi >= v ? range.hi : v;
			range.has_hi = true;
		}
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
		result = merge_unit(desc, in, inputs, total, &range, &isnull);
	else
		result = merge_pairs(desc, in, inputs, total, (int) nkeys, &range);
	ReleaseTupleDesc(desc);
	if (isnull)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(result);
}
