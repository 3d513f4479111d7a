"""The functions untrusted SQL (segments, consent conditions, ``freshness_sql``) may call.

An allow-list, by DuckDB's own function names (what its parser reports, e.g. ``~~`` for
LIKE, ``array_extract`` for ``x[1]``). Every entry is a plain scalar, aggregate, window or
list function that computes over the values it is given: none reads a file, a setting, the
environment, the catalog or another query's data. Names not listed are refused by name;
docs/segment-sql.md is the user's copy of this list and says why.

Left out on purpose: anything naming the engine or its settings (``current_setting``,
``getenv``, ``getvariable``, ``version``, ``duckdb_*``, ``pragma_*``, ``stats``), table and
file functions, sequences (``nextval``), ``error``, random numbers, and the *amplifiers* —
functions that build a value far larger than their input from a number (``repeat``,
``range``, ``generate_series``, ``list_resize``, ``printf``/``format`` widths, ``bar``):
DuckDB's ``memory_limit`` does not bound a single giant string, and a running function
cannot be interrupted, so ``repeat('x', 2e9)`` would eat the machine before any time limit
fires. ``lpad``/``rpad`` are allowed with a literal length of at most :data:`MAX_PAD`.
"""

from __future__ import annotations

#: operators as DuckDB's parser names them (LIKE is ``~~``, GLOB ``~~~``, ``^@`` starts_with)
_OPERATORS = (
    "+ - * / // % ** ^ || ~~ !~~ ~~* !~~* ~~~ !~~~ ^@ & | << >> ~ ! !__postfix @ @> <@ && -> ->>"
)
OPERATORS = frozenset(_OPERATORS.split())

STRING = """
    lower upper lcase ucase length len strlen char_length character_length octet_length
    bit_length concat concat_ws substr substring substring_grapheme left right
    left_grapheme right_grapheme trim ltrim rtrim lpad rpad replace reverse strpos instr
    position contains starts_with prefix suffix ends_with like_escape not_like_escape
    ilike_escape not_ilike_escape regexp_matches regexp_full_match regexp_replace
    regexp_extract regexp_extract_all regexp_split_to_array regexp_escape split_part
    string_split str_split string_to_array split string_split_regex str_split_regex ascii
    chr unicode ord md5 md5_number md5_number_lower md5_number_upper sha1 sha256 hash
    strip_accents nfc_normalize levenshtein damerau_levenshtein hamming mismatches jaccard
    jaro_similarity jaro_winkler_similarity editdist3 translate to_base64 from_base64
    base64 hex unhex to_hex from_hex url_encode url_decode array_to_string
"""

MATH = """
    abs ceil ceiling floor round round_even roundbankers trunc sign signbit sqrt cbrt exp
    ln log log2 log10 pow power mod greatest least pi degrees radians sin cos tan asin acos
    atan atan2 cot sinh cosh tanh asinh acosh atanh gcd lcm greatest_common_divisor
    least_common_multiple isnan isinf isfinite even gamma lgamma bit_count xor add subtract
    multiply divide fdiv fmod
"""

DATETIME = """
    today now current_date current_timestamp get_current_timestamp get_current_time
    current_localtimestamp current_localtime transaction_timestamp date_part datepart
    date_trunc datetrunc date_diff datediff date_sub datesub date_add extract year month
    day dayofweek dayofyear dayofmonth week weekofyear weekday isodow isoyear yearweek
    quarter hour minute second millisecond microsecond nanosecond epoch epoch_ms epoch_us
    epoch_ns make_date make_time make_timestamp make_timestamptz make_timestamp_ns last_day
    monthname dayname strftime strptime try_strptime to_timestamp to_days to_months
    to_years to_hours to_minutes to_seconds to_weeks to_milliseconds to_microseconds
    to_centuries to_decades to_millennia to_quarters age century decade era millennium
    time_bucket timezone julian timezone_hour timezone_minute
"""

CONDITIONAL = """
    coalesce ifnull nullif if typeof
"""

AGGREGATE = """
    count count_star sum avg mean min max any_value arbitrary first last string_agg
    group_concat listagg list array_agg bool_and bool_or bit_and bit_or bit_xor median mode
    quantile quantile_cont quantile_disc approx_count_distinct approx_quantile stddev
    stddev_pop stddev_samp variance var_pop var_samp corr covar_pop covar_samp arg_max
    arg_min argmax argmin max_by min_by product fsum kahan_sum sumkahan favg entropy
    kurtosis kurtosis_pop skewness count_if countif regr_count regr_slope
    regr_intercept regr_r2 regr_avgx regr_avgy
"""

WINDOW = """
    row_number rank dense_rank rank_dense percent_rank cume_dist ntile lag lead
    first_value last_value nth_value
"""

LIST = """
    list_value list_pack list_extract list_element array_extract list_slice array_slice
    list_contains list_has array_contains array_has list_position list_indexof
    array_position array_indexof array_length list_concat list_cat array_concat array_cat
    list_append array_append array_push_back list_prepend array_prepend array_push_front
    list_distinct array_distinct list_unique array_unique list_sort array_sort
    list_reverse_sort array_reverse_sort list_filter array_filter filter list_transform
    array_transform apply list_apply array_apply list_reduce array_reduce reduce
    list_aggregate list_aggr aggregate array_aggregate array_aggr list_sum list_min
    list_max list_count list_avg list_first list_last list_has_any list_has_all
    array_has_any array_has_all flatten unnest list_zip list_intersect array_intersect
    list_where list_select array_where array_select list_grade_up array_grade_up
    list_reverse array_reverse cardinality struct_pack struct_extract struct_insert row
    map map_extract map_extract_value element_at map_keys map_values map_entries
    map_from_entries map_contains
"""

JSON = """
    json_extract json_extract_string json_extract_path json_extract_path_text json_valid
    json_type json_array_length json_contains json_keys json_value json_exists
"""

ALLOWED_FUNCTIONS = frozenset(
    " ".join((STRING, MATH, DATETIME, CONDITIONAL, AGGREGATE, WINDOW, LIST, JSON)).split()
)

#: functions whose size argument (0-based position) must be a literal of at most MAX_PAD
SIZE_ARGUMENT = {"lpad": 1, "rpad": 1}
MAX_PAD = 1000
