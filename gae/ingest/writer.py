"""The SQL pipeline: staged chunks classified, deduplicated and written inside the caller's transaction."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from gae.ingest.config import FileSummary, IngestConfig
from gae.ingest.text import BOUNDARY, LEAD, TRAIL, nfc_suspects, rare_characters

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa


# ---------------------------------------------------------------- the pipeline


def _sql(name: str) -> str:
    from gae.db import load_sql

    if name not in _SQL_CACHE:
        _SQL_CACHE[name] = load_sql(f"ingest/{name}")
    return _SQL_CACHE[name]


_SQL_CACHE: dict[str, str] = {}


def _exec(con: duckdb.DuckDBPyConnection, name: str, params: dict):
    from gae.db import sql_param_names

    sql = _sql(name)
    return con.execute(sql, {k: params[k] for k in sql_param_names(sql)})


class _Writer:
    """Runs the SQL pipeline on staged chunks of one source inside the caller's transaction."""

    def __init__(self, con: duckdb.DuckDBPyConnection, cfg: IngestConfig, ingest_id: str):
        self.con, self.cfg, self.ingest_id = con, cfg, ingest_id
        meta_remove = json.dumps({cfg.text_field: None, cfg.prompt_field: None, cfg.reference_field: None})
        self.params = {
            "text_path": f'$."{cfg.text_field}"',
            "prompt_path": f'$."{cfg.prompt_field}"',
            "reference_path": f'$."{cfg.reference_field}"',
            "text_field_name": repr(cfg.text_field),
            "prompt_field_name": repr(cfg.prompt_field),
            "joiner": cfg.list_joiner,
            "max_chars": cfg.max_chars,
            "max_control": cfg.max_control_fraction,
            "raw_max": cfg.raw_max_chars,
            "meta_remove": meta_remove,
            "eval_bp": round(cfg.eval_fraction * 10000),
            "nfc_suspects": nfc_suspects(),
            "rare": rare_characters(),
            "ingest_id": ingest_id,
        }

    def begin(self) -> None:
        """Empty staging for one transaction's documents and prompts (see flush_documents.sql)."""
        # each chunk's new documents stay in the table select_new.sql made (`_new_<k>`), read through the
        # view _pending_documents: no copy of every text into a staging table before the flush
        self.chunks = 0
        self._pending_view()
        # every accepted record's document, new or a duplicate of a stored one (ingest_documents)
        self.con.execute("create or replace temp table _pending_ingest_docs (document_id varchar)")
        self.con.execute(
            "create or replace temp table _pending_prompts as select prompt_id, document_id, prompt_start, "
            "prompt_len, reference_start, reference_len, prompt, reference, split, origin from prompt_spans limit 0"
        )

    def finish(self) -> None:
        """Write the staged documents and prompts; the caller commits."""
        _exec(self.con, "flush_documents", self.params)
        _exec(self.con, "flush_prompts", self.params)
        self.con.execute(
            "insert into ingest_documents select distinct $i, document_id from _pending_ingest_docs",
            {"i": self.ingest_id},
        )
        self.con.execute("drop view _pending_documents")
        for k in range(self.chunks):
            self.con.execute(f"drop table _new_{k}")
        self.con.execute("drop table _pending_prompts")
        self.con.execute("drop table _pending_ingest_docs")

    def _pending_view(self) -> None:
        """_pending_documents: the documents rows of the chunks added so far (none before the first)."""
        cols = "document_id, source as source_uri, line, record, content_hash, text, length(text) as n_chars, metadata, split"
        parts = [f"select {cols} from _new_{k}" for k in range(self.chunks)] or [
            "select document_id, source_uri, line, record, content_hash, text, n_chars, metadata, split "
            "from documents limit 0"
        ]
        self.con.execute("create or replace temp view _pending_documents as " + " union all ".join(parts))

    def add(
        self, chunk: pa.Table, source_uri: str, files: dict[str, FileSummary], by_reason: dict[str, int]
    ) -> int:
        """Classify and insert one chunk (records of `source_uri`, or of each row's `source`);
        add its counts to the per-source summaries; return the number of prompts inserted."""
        import pyarrow as pa

        con = self.con
        params = dict(self.params, source_uri=source_uri)
        # record batches of 8k rows (zero-copy slices): DuckDB scans an Arrow table batch-parallel,
        # so one big batch would run the whole pipeline on one core
        con.register(
            "_chunk_src", pa.Table.from_batches(chunk.to_batches(max_chunksize=8192), schema=chunk.schema)
        )
        try:
            # blank lines of JSON-lines files are not records (short-circuit: only short lines are decoded)
            con.execute(
                "create or replace temp view _chunk as select * from _chunk_src where raw is null "
                "or octet_length(raw) > 16 or trim(coalesce(try(decode(raw)), 'x'), e' \\t\\r\\n') <> ''"
            )
            _exec(con, "classify", params)
        finally:
            con.execute("drop view if exists _chunk")
            con.unregister("_chunk_src")
        _exec(con, "insert_errors", params)
        con.execute(
            "insert into _pending_ingest_docs select left(content_hash, 16) from _classified where reason is null"
        )
        _exec(con, "select_new", params)
        counts = con.execute(
            "select source, reason, count(*), any_value(detail) from _classified group by all"
        ).fetchall()
        new = dict(con.execute("select source, count(*) from _new group by all").fetchall())
        for source, reason, n, detail in counts:
            fs = files[source]
            fs.records += n
            if reason is None:
                fs.inserted += new.get(source, 0)
                fs.duplicates += n - new.get(source, 0)
            else:
                by_reason[reason] = by_reason.get(reason, 0) + n
                fs.quarantined += n
                if reason == "unreadable":  # a reader's whole-file failure: one record for the file
                    fs.error = detail
        ((prompts,),) = _exec(con, "insert_field_prompts", params).fetchall()
        if self.cfg.make_prompts and self.cfg.max_prompts_per_document > 0:
            prompts += self._cut_prompts()
        con.execute(f"alter table _new rename to _new_{self.chunks}")
        self.chunks += 1
        self._pending_view()
        return prompts

    def _cut_prompts(self) -> int:
        """Cut passages from the new documents without a prompt field, one SQL pass per passage number."""
        import pyarrow as pa

        cfg, con = self.cfg, self.con
        params = {
            "boundary": "^" + BOUNDARY,
            "lead": LEAD,
            "trail": TRAIL,
            "prompt_chars": cfg.prompt_chars,
            "reference_chars": cfg.reference_chars,
            "min_prompt_chars": cfg.min_prompt_chars,
            "min_reference_chars": cfg.min_reference_chars,
        }
        # The first pass reads the new texts as 8k-row Arrow batches: a scan of the temp table _new runs
        # on one thread per 122,880-row group (so on one core), and the regexps of a pass are CPU-bound.
        # Every pass reads at most prompt_chars + reference_chars characters past the previous one, so the
        # passes need only a prefix of each text (n stays the whole length): a long document is not copied
        # whole into each pass's state. The leading whitespace is measured by a regexp (ltrim would copy).
        src = con.sql(
            """select document_id, split, case when n > pos + $span then left(text, pos + $span) else text end as text,
                      n, pos
               from (select document_id, split, text, length(text) as n, length(regexp_extract(text, $lead)) as pos
                     from _new where prompt is null)""",
            params={
                "span": cfg.max_prompts_per_document * (cfg.prompt_chars + cfg.reference_chars),
                "lead": LEAD,
            },
        ).to_arrow_table()
        con.register("_cut_src", pa.Table.from_batches(src.to_batches(max_chunksize=8192), schema=src.schema))
        con.execute("create or replace temp view _cut_state as select * from _cut_src")
        total, state = 0, "view"
        for k in range(cfg.max_prompts_per_document):
            _exec(con, "cut_prompts", params)
            ok = "prompt_len >= $min_p and reference_len >= $min_r"
            lims = {"min_p": cfg.min_prompt_chars, "min_r": cfg.min_reference_chars}
            ((n,),) = con.execute(
                "insert into _pending_prompts (prompt_id, document_id, prompt_start, prompt_len, reference_start, "
                "reference_len, split, origin) select document_id || '-' || $k, document_id, prompt_start, "
                f"prompt_len, reference_start, reference_len, split, 'cut' from _cut_step where {ok}",
                {"k": k, **lims},
            ).fetchall()
            total += n
            if n == 0:
                break
            # only documents with room for another passage go on (most are used up by the first one)
            con.execute(f"drop {state} _cut_state")
            state = "table"
            con.execute(
                "create or replace temp table _cut_state as select document_id, split, text, n, pos "
                f"from _cut_step where {ok} and n - pos >= $min_pr",
                {**lims, "min_pr": cfg.min_prompt_chars + cfg.min_reference_chars},
            )
        con.execute(f"drop {state} if exists _cut_state")
        con.execute("drop table if exists _cut_step")
        con.unregister("_cut_src")
        return total
