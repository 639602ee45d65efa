"""``twostage``: ingest, query, inspect and verify from the shell. Thin: parse, call the library, print.

Settings come from flags, then ``TWOSTAGE_*`` environment variables, then ``--config FILE`` (TOML).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer
from pydantic import ValidationError
from typer.core import TyperGroup
from typer.exceptions import TyperException

from llama_index_twostage.errors import ConfigurationError, DocumentError, TwoStageError
from llama_index_twostage.ingest.files import FolderDocuments, read_files
from llama_index_twostage.nodes import stage_info
from llama_index_twostage.pipeline import TwoStagePipeline
from llama_index_twostage.redaction import Redactor
from llama_index_twostage.settings import RetrieverSettings
from llama_index_twostage.stage1 import found_by
from llama_index_twostage.stage2 import PairTemplate
from llama_index_twostage.store import CollectionContract, distance_space
from llama_index_twostage.timing import Stopwatch

logger = logging.getLogger(__name__)


class OneLineUsageErrors(TyperGroup):
    """A bad flag, a missing argument or an unknown command ends like every other error: one line that starts
    with the reason, exit code 2 (typer's framed usage box would bury the reason under the usage)."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TyperException as error:  # typer's own click errors (it vendors click); usage errors exit with 2
            if getattr(error, "exit_code", None) != 2:
                raise
            usage = getattr(error, "ctx", None) or ctx
            fail(f"{error.format_message()} (see `{usage.command_path} --help`)")


app = typer.Typer(
    help="Two-stage retrieval for LlamaIndex: Chroma recall, cross-encoder precision.",
    cls=OneLineUsageErrors,
    pretty_exceptions_show_locals=False,  # locals may hold a secret's value
)

# Settings a command can take as flags; each command names the ones that matter to it.
SETTINGS_FLAGS: dict[str, tuple[Any, str]] = {
    "collection": (Optional[str], "Chroma collection."),
    "persist_dir": (Optional[Path], "Embedded Chroma directory."),
    "chroma_host": (Optional[str], "Chroma server host (selects server mode)."),
    "chroma_port": (Optional[int], "Chroma server port."),
    "embed_model": (Optional[str], "Bi-encoder: hub id or local directory."),
    "rerank_model": (Optional[str], "Cross-encoder: hub id or local directory."),
    "recall_k": (Optional[int], "Stage-1 candidates."),
    "top_k": (Optional[int], "Final results."),
    "splitter": (Optional[str], "Chunking: sentence, markdown, semantic or code:LANG (e.g. code:python)."),
}
STORE_FLAGS = ("collection", "persist_dir", "chroma_host", "chroma_port")
MODEL_FLAGS = ("embed_model", "rerank_model", "recall_k", "top_k")


def load_settings(config: Path | None = None, **flags: Any) -> RetrieverSettings:
    """Settings from the flags given (None = not given), env vars and the optional TOML file."""
    given = {name: value for name, value in flags.items() if value is not None}
    if config is not None:
        return RetrieverSettings.from_toml(config, **given)
    return RetrieverSettings(**given)


def _flag(name: str, annotation: Any, help_text: str, **option: Any) -> inspect.Parameter:
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[annotation, typer.Option(help=help_text, **option)],
    )


def with_settings(*flags: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command ``--config`` and the named settings flags, and call it with the resulting ``settings``.

    Every failure ends the command with one readable line and exit code 2: errors of this package and invalid
    settings say what to do; anything else is named, its traceback logged with ``--verbose``. What the command
    prints and logs has the settings' secrets masked, also where a server echoed them.
    """

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "settings"]
        added = [_flag("config", Optional[Path], "TOML settings file.")]  # checked by from_toml: one line
        added += [_flag(name, *SETTINGS_FLAGS[name]) for name in flags]

        @functools.wraps(command)
        def run(**arguments: Any) -> None:
            given = {parameter.name: arguments.pop(parameter.name) for parameter in added}
            redact = Redactor()
            try:
                settings = load_settings(**given)
                redact = Redactor([settings.chroma_token, settings.rerank_api_key])
                for handler in logging.getLogger().handlers:  # the handler `main` configured, or the caller's
                    handler.addFilter(redact)
                command(settings=settings, **arguments)
            except (typer.Exit, typer.Abort, TyperException):  # the command's own exit, and usage errors
                raise
            except (TwoStageError, ValidationError) as error:
                fail(redact(_one_line(error)))
            except Exception as error:  # a fault no message of ours describes yet: still one line, never a secret
                logger.info("traceback of the unexpected error:", exc_info=True)
                fail(
                    f"unexpected {type(error).__name__}: {redact.excerpt(str(error), 300)} (run with --verbose for "
                    "the traceback, and please report it)"
                )
            finally:
                for handler in logging.getLogger().handlers:
                    handler.removeFilter(redact)

        run.__signature__ = inspect.Signature([*own, *added])  # type: ignore[attr-defined]
        return run

    return decorate


def fail(message: str) -> NoReturn:
    """End the command with one red line on stderr and exit code 2."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def load_documents(path: Path, limit: int | None = None, source: str | None = None) -> FolderDocuments:
    """A BEIR corpus (``corpus.jsonl`` or a folder holding one), else the text files of a folder (or one file),
    named ``source`` where given."""
    from llama_index_twostage.evaluation.datasets import load_beir_corpus

    if limit is not None and limit < 1:
        raise ConfigurationError(f"--limit must be at least 1, got {limit}: leave it out to ingest every document")
    corpus = path / "corpus.jsonl" if path.is_dir() else path
    if corpus.suffix == ".jsonl" and corpus.is_file():
        read = FolderDocuments(load_beir_corpus(corpus))
    else:
        read = read_files(path, source)
    if read.skipped:
        logger.warning(
            "skipped %d files: %s",
            len(read.skipped),
            "; ".join(f"{name} ({why})" for name, why in read.skipped.items()),
        )
    if not read.documents:
        raise DocumentError(f"no documents to ingest in {str(path)!r}: {len(read.skipped)} files, none of them text")
    read.documents = read.documents[:limit]
    return read


def _one_line(error: Exception) -> str:
    """Pydantic's multi-line report folded into ``field: message`` pairs, without inputs or doc links."""
    if isinstance(error, ValidationError):
        return "; ".join(
            ".".join(map(str, item["loc"])) + ": " + item["msg"] if item["loc"] else item["msg"]
            for item in error.errors(include_input=False, include_url=False)
        )
    return str(error)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")


@app.command()
@with_settings(*STORE_FLAGS, "embed_model", "splitter")
def ingest(
    settings: RetrieverSettings,
    path: Annotated[Path, typer.Argument(help="Folder or file of documents, or a BEIR corpus.jsonl.", exists=True)],
    limit: Annotated[Optional[int], typer.Option(help="Ingest only the first N documents.")] = None,
    source: Annotated[
        Optional[str],
        typer.Option(help="Name the folder (ids become NAME/<path>, the same on every machine and after a move)."),
    ] = None,
    sync: Annotated[
        bool, typer.Option("--sync", help="Delete documents ingested earlier from this folder whose files are gone.")
    ] = False,
) -> None:
    """Chunk, embed and store documents (re-runs add nothing twice)."""
    if sync and (limit is not None or not path.is_dir()):
        raise ConfigurationError(
            "--sync needs a whole folder: give a folder and no --limit (what is left out is deleted)"
        )
    read = load_documents(path, limit, source)
    if sync and read.source is None:
        raise ConfigurationError(f"--sync needs a folder of files; {str(path)!r} is a corpus file")
    with TwoStagePipeline(settings) as pipeline:
        report = pipeline.ingest(read.documents, source=read.source, sync=sync)
    typer.echo(
        f"{report.documents} documents -> {report.chunks} chunks: {report.added} added, "
        f"{report.already_stored} already stored; collection {report.collection!r} now holds "
        f"{report.stored_total} ({report.seconds:.1f}s)"
    )
    typer.echo(
        f"{report.unchanged_documents} documents unchanged (skipped), {report.replaced_documents} replaced, "
        f"{report.removed_stale} stale chunks removed, {report.reused_embeddings} embeddings reused"
        + (f", {report.deleted_documents} documents whose files are gone deleted" if sync else "")
    )
    if read.skipped or report.empty_documents:
        typer.echo(
            f"{len(read.skipped)} files skipped (unreadable, not text, or empty): {', '.join(read.skipped) or 'none'}; "
            f"{report.empty_documents} documents without text not stored"
        )


@app.command()
@with_settings(*STORE_FLAGS, *MODEL_FLAGS)
def query(settings: RetrieverSettings, text: Annotated[str, typer.Argument(help="The query.")]) -> None:
    """Two-stage search: the final top_k with stage-1 rank -> final rank, both scores and timings."""
    with TwoStagePipeline(settings) as pipeline:
        pipeline.store.with_retries(pipeline.store.open_collection)  # a missing collection fails before models load
        typer.echo(format_results(pipeline.two_stage_retriever().retrieve(text)))


def visible(text: str) -> str:
    """``text`` safe for a terminal: whitespace as spaces, other control and invisible characters as escapes
    (a stored ``\\x1b[2J`` would otherwise clear the user's screen)."""
    return "".join(
        " " if character.isspace() else character if character.isprintable() else ascii(character)[1:-1]
        for character in text
    )


def format_results(results: list[Any]) -> str:
    """A table of stage-1 rank -> final rank, which side found it, both scores and the text's start; timings under."""
    lines = [f"{'stage1 -> final':>15}  {'found by':<8}  {'stage1 score':>12}  {'rerank score':>12}  text"]
    for scored in results:
        info = stage_info(scored)
        snippet = visible(scored.node.get_content())[:60]
        lines.append(
            f"{info['stage1_rank']:>6} -> {info['final_rank']:<5}  {found_by(info):<8}  {info['stage1_score']:>12.4f}  "
            f"{info['rerank_score']:>12.4f}  {snippet}"
        )
    if results:
        info = stage_info(results[0])
        if "stage1_fallback" in info:
            lines.append(f"stage 1: {info['stage1_fallback']}")
        truncated = info.get("pairs_truncated", "unknown: the server's window")
        lines.append(
            f"stage 1 ({info.get('stage1_mode', 'dense')}): {info['stage1_ms']:.0f} ms | "
            f"stage 2: {info['stage2_ms']:.0f} ms for {info['pairs_scored']} pairs ({truncated} truncated)"
        )
    return "\n".join(lines)


@app.command()
@with_settings(*STORE_FLAGS)
def info(settings: RetrieverSettings) -> None:
    """The collection (where it lives, how many nodes, which model wrote it, dimension and distance space) and the
    reranker (its backend, and why when 'auto' chose it; what it reads)."""
    with TwoStagePipeline(settings) as pipeline:
        target = pipeline.store.with_retries(pipeline.store.open_collection)
        contract = CollectionContract.of(target)
        typer.echo(f"collection:      {target.name} in {pipeline.store.describe()}")
        typer.echo(f"nodes:           {target.count()}")
        typer.echo(f"embedding model: {contract.embed_model if contract else 'not recorded'}")
        typer.echo(f"embed backend:   {contract.embed_backend if contract else 'not recorded'}")
        typer.echo(f"dimension:       {contract.dimension if contract else 'not recorded'}")
        typer.echo(f"distance space:  {distance_space(target)}")
        typer.echo(f"lexical index:   {pipeline.lexical.count()} records in {pipeline.lexical.describe()}")
        typer.echo(f"stage 1:         {settings.describe_stage1()}")
        scorer = pipeline.reranker().scorer
    typer.echo(f"rerank model:    {settings.rerank_model} (recall_k={settings.recall_k}, top_k={settings.top_k})")
    backend = getattr(scorer, "backend", "unknown")
    reason = getattr(scorer, "backend_reason", None) or "as set"
    if settings.rerank_backend == "http":  # the URL, never the key
        reason = f"{settings.rerank_api} API at {settings.rerank_url}"
    typer.echo(f"rerank backend:  {backend} ({reason})")
    typer.echo(f"reranker reads:  {PairTemplate.from_settings(settings).describe()}")
    typer.echo(f"long documents:  {settings.rerank_long_documents}")


@app.command()
@with_settings(*STORE_FLAGS, "embed_model")
def verify(
    settings: RetrieverSettings,
    repair: Annotated[bool, typer.Option("--repair", help="Bring the lexical index back in step with Chroma.")] = False,
) -> None:
    """Check every stored node (embedding of the recorded dimension, the recorded model, no stale or sourceless
    chunks) and that the lexical index holds exactly Chroma's records. Exit code 1 when problems are found."""
    with TwoStagePipeline(settings) as pipeline:
        report = pipeline.verify(repair_lexical=repair)
    typer.echo("\n".join(report.describe()))
    if not report.ok:
        raise typer.Exit(code=1)


@app.command()
@with_settings(*STORE_FLAGS)
def delete(
    settings: RetrieverSettings,
    ids: Annotated[list[str], typer.Argument(help="Document ids (ref_doc_id; from a folder: <source>/<path>).")],
) -> None:
    """Delete documents (every chunk of each) from Chroma and the lexical index; every other host's index learns of
    it through the change feed."""
    with TwoStagePipeline(settings) as pipeline:
        report = pipeline.delete(ids)
    typer.echo(
        f"{report.documents} of {len(set(ids))} documents found, {report.chunks} chunks deleted; collection "
        f"{settings.collection!r} now holds {report.stored_total}"
    )


@app.command()
@with_settings(*STORE_FLAGS)
def reindex(settings: RetrieverSettings) -> None:
    """Rebuild the lexical (BM25) index from Chroma alone, e.g. for a collection written by another tool or a new
    host of a Chroma server."""
    with TwoStagePipeline(settings) as pipeline:
        with Stopwatch() as watch:
            indexed = pipeline.reindex()
        typer.echo(f"{indexed} records indexed in {pipeline.lexical.describe()} ({watch.ms / 1000:.1f}s)")


@app.command("eval")
@with_settings("persist_dir", "chroma_host", "chroma_port", *MODEL_FLAGS)
def eval_command(
    settings: RetrieverSettings,
    dataset: Annotated[Path, typer.Argument(help="BEIR folder or corpus.jsonl, or LlamaIndex QA .json.", exists=True)],
    out: Annotated[Path, typer.Option("--out", help="Folder for report.json, per_query.csv and the plots.")],
    sweep: Annotated[Optional[str], typer.Option(help="recall_k values to compare, e.g. 10,20,50,100.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Evaluate only the first N judged queries.")] = None,
    knee_tolerance: Annotated[float, typer.Option(help="nDCG@10 the recommended recall_k may lose.")] = 0.005,
    split: Annotated[str, typer.Option(help="BEIR qrels split.")] = "test",
    title_as_metadata: Annotated[
        bool, typer.Option(help="BEIR titles as metadata, not text (the reranker reads them per rerank_metadata_keys).")
    ] = False,
    modes_to_compare: Annotated[
        Optional[str],
        typer.Option(
            "--compare-stage1",
            help="Stage-1 modes to compare in one run, e.g. dense,hybrid (the first is the reference).",
        ),
    ] = None,
) -> None:
    """Evaluate stage 1 alone and two-stage retrieval on a labelled dataset; recommend a recall_k.

    Stage 1 follows stage1_mode (TWOSTAGE_STAGE1_MODE), or --compare-stage1 evaluates several side by side. What
    the reranker reads follows the settings (e.g. TWOSTAGE_RERANK_METADATA_KEYS=title, or --config).
    """
    from llama_index_twostage.evaluation import (
        compare_stage1,
        evaluate,
        format_table,
        load_dataset,
        parse_modes,
        parse_sweep,
        write_comparison,
        write_report,
    )

    if out.exists() and not out.is_dir():  # before the work, not after it
        raise ConfigurationError(f"--out {str(out)!r} is a file: give a folder for the report files")
    modes = parse_modes(modes_to_compare) if modes_to_compare else None
    options = {"sweep": parse_sweep(sweep) if sweep else None, "limit": limit, "knee_tolerance": knee_tolerance}
    labelled = load_dataset(dataset, split, title_as_metadata=title_as_metadata)
    if modes:
        comparison = compare_stage1(labelled, settings, modes, **options)
        write_comparison(comparison, out)
        for report in comparison.reports.values():
            typer.echo(format_table(report) + "\n")
        typer.echo(comparison.format_table())
    else:
        report = evaluate(labelled, settings, **options)
        write_report(report, out)
        typer.echo(format_table(report))
    typer.echo(f"report written to {out}")
