"""Shape where clauses, split along their seams (import from the modules, or from
:mod:`electricctl._shapes.compile`, which gathers the public names):

- :mod:`.kinds`: the value kinds and the Postgres types they stand for;
- :mod:`.errors`: :class:`ShapeError` (refused, with a position) and :class:`EvalError` (one row);
- :mod:`.values`: Postgres text to typed Python values and back;
- :mod:`.ir`: the typed IR, one frozen dataclass per node kind, each with its offset in the clause;
- :mod:`.functions`: the functions a clause may call;
- :mod:`.check`: the parsed clause to the typed IR, with type errors;
- :mod:`.to_sql` and :mod:`.to_python`: the two back ends;
- :mod:`.compiled`: :func:`compile_where`, the pipeline, and :class:`CompiledWhere`;
- :mod:`.combine`: AND/OR of compiled clauses and other filters the permissions build.
"""
