"""Ingest options (`IngestConfig`, defaults in one place) and what an ingest reports."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

FORMATS = {
    ".txt": "text",
    ".md": "text",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
}
FORMATS[".parquet"] = "parquet"
REASONS = (
    "invalid_utf8",
    "malformed_json",
    "not_an_object",
    "malformed_csv",
    "missing_field",
    "bad_field_type",
    "empty_text",
    "too_large",
    "unreadable",
    "csv_no_header",
    "control_characters",
)
BOM = b"\xef\xbb\xbf"
DEFAULT_CORPUS_URI = "python-stdlib:"


class IngestConfig(BaseModel):
    """How files become documents and prompts. Defaults live here and only here."""

    model_config = ConfigDict(extra="forbid")

    text_field: str = Field(
        "text", description="JSON/CSV/Parquet field holding the text; a list of strings is joined."
    )
    prompt_field: str = Field("prompt", description="Field with an explicit prompt, used as-is when present.")
    reference_field: str = Field("reference", description="Field with the reference continuation or answer.")
    list_joiner: str = Field(
        "\n",
        description="Joins the items of a list-valued field (a poem's `paragraphs`); the default is one "
        "line break, which a form's text box shows as an empty line.",
    )
    split_paragraphs: bool = Field(
        False, description="Plain text: a document per blank-line block, not per file."
    )
    max_chars: int = Field(
        1_000_000, gt=0, description="Records with a longer text are quarantined as too_large."
    )
    raw_max_chars: int = Field(
        1000, gt=0, description="Characters of a rejected record kept in ingest_errors.raw."
    )
    eval_fraction: float = Field(
        0.05, ge=0.0, le=1.0, description="Share of documents (by id hash) in split eval."
    )
    make_prompts: bool = Field(True, description="Cut prompts from documents that do not give one.")
    prompt_chars: int = Field(
        240, gt=0, description="A cut prompt ends at the last sentence boundary within this."
    )
    reference_chars: int = Field(
        240, gt=0, description="A reference ends at the last sentence boundary within this."
    )
    min_prompt_chars: int = Field(
        8, ge=1, description="Shortest cut prompt (8 suits CJK, where a clause is 7-8 characters)."
    )
    min_reference_chars: int = Field(
        8, ge=1, description="Shortest reference; shorter documents give no prompt."
    )
    max_prompts_per_document: int = Field(4, ge=0, description="Passages cut from one document at most.")
    csv_header: bool | None = Field(
        None,
        description="CSV files start with a header row (true), have none (false), or either (null: decided "
        "per file from DuckDB's sniffer and whether the first row names the text field; a file where it "
        "cannot be told has every record quarantined as csv_no_header).",
    )
    max_control_fraction: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="Records whose text is more than this share of control characters (other than "
        "whitespace) are quarantined as control_characters: binary data, or UTF-16 read as UTF-8 "
        "(half NUL bytes). Colourised logs stay well under it.",
    )
    chunk_bytes: int = Field(
        64 << 20, gt=0, description="JSON lines are staged in chunks of about this many bytes."
    )

    @field_validator("text_field", "prompt_field", "reference_field")
    @classmethod
    def _plain_key(cls, v: str) -> str:
        if not v or '"' in v or "\\" in v:
            raise ValueError(f"field name {v!r} must be non-empty and contain no quote or backslash")
        return v


class FileSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str
    format: str
    bytes: int = 0
    records: int = 0
    inserted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    error: str | None = Field(
        None, description="Why the file could not be read at all: it is one `unreadable` quarantined record."
    )


class IngestSummary(BaseModel):
    """What one ingest did. records = inserted + duplicates + quarantined (nothing else happens to a record)."""

    model_config = ConfigDict(extra="forbid")

    ingest_id: str
    database: str
    files: int = 0
    files_failed: int = Field(
        0,
        description="Files quarantined whole (unreadable: truncated gzip, permission denied); the rest was read.",
    )
    skipped_files: list[str] = Field(
        default_factory=list, description="Unsupported files met inside folders."
    )
    bytes_read: int = 0
    records: int = 0
    inserted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    quarantined_by_reason: dict[str, int] = Field(default_factory=dict)
    prompts: int = 0
    seconds: float = 0.0
    sources: list[FileSummary] = Field(default_factory=list)

    def render(self) -> str:
        mb = self.bytes_read / 1e6
        lines = [
            f"ingest {self.ingest_id} into {self.database}",
            f"  files        {self.files}"
            + (f" ({len(self.skipped_files)} unsupported skipped)" if self.skipped_files else ""),
            f"  read         {self.records} records, {mb:.1f} MB in {self.seconds:.2f} s",
            f"  inserted     {self.inserted} documents, {self.prompts} prompts",
            f"  duplicates   {self.duplicates}",
            f"  quarantined  {self.quarantined}",
        ]
        lines += [f"    {reason:<20}{n}" for reason, n in sorted(self.quarantined_by_reason.items())]
        if self.files_failed:
            lines.append(
                f"  unreadable   {self.files_failed} files quarantined whole (the other files were read):"
            )
            lines += [f"    {fs.source}: {fs.error}" for fs in self.sources if fs.error]
        if self.quarantined:
            lines.append("  see them with: gae query ingest_errors_by_reason")
        return "\n".join(lines)
