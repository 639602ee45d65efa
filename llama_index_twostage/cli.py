"""``twostage``: ingest, query and inspect from the shell. Thin: parse, call the library, print.

Settings come from flags, then ``TWOSTAGE_*`` environment variables, then ``--config FILE`` (TOML).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from llama_index.core import Document, SimpleDirectoryReader
from pydantic import ValidationError

from llama_index_twostage import store
from llama_index_twostage.errors import TwoStageError
from llama_index_twostage.ingest import ingest_documents
from llama_index_twostage.nodes import stage_info
from llama_index_twostage.pipeline import build_two_stage_retriever
from llama_index_twostage.settings import RetrieverSettings

app = typer.Typer(help="Two-stage retrieval for LlamaIndex: Chroma recall, cross-encoder precision.")

ConfigOption = Annotated[Optional[Path], typer.Option("--config", help="TOML settings file.", exists=True)]
CollectionOption = Annotated[Optional[str], typer.Option(help="Chroma collection.")]
PersistDirOption = Annotated[Optional[Path], typer.Option(help="Embedded Chroma directory.")]
HostOption = Annotated[Optional[str], typer.Option(help="Chroma server host (selects server mode).")]
PortOption = Annotated[Optional[int], typer.Option(help="Chroma server port.")]
EmbedOption = Annotated[Optional[str], typer.Option(help="Bi-encoder: hub id or local directory.")]
RerankOption = Annotated[Optional[str], typer.Option(help="Cross-encoder: hub id or local directory.")]
RecallOption = Annotated[Optional[int], typer.Option(help="Stage-1 candidates.")]
TopOption = Annotated[Optional[int], typer.Option(help="Final results.")]


def load_settings(config: Path | None = None, **flags: Any) -> RetrieverSettings:
    """Settings from the flags given (None = not given), env vars and the optional TOML file."""
    given = {name: value for name, value in flags.items() if value is not None}
    if config is not None:
        return RetrieverSettings.from_toml(config, **given)
    return RetrieverSettings(**given)


def load_documents(path: Path, limit: int | None = None) -> list[Document]:
    """A BEIR corpus (``corpus.jsonl`` or a folder holding one), else any files SimpleDirectoryReader reads."""
    from llama_index_twostage.evaluation.datasets import load_beir_corpus

    corpus = path / "corpus.jsonl" if path.is_dir() else path
    if corpus.suffix == ".jsonl" and corpus.is_file():
        documents = load_beir_corpus(corpus)
    elif path.is_dir():
        documents = SimpleDirectoryReader(str(path), recursive=True, filename_as_id=True).load_data()
    else:
        documents = SimpleDirectoryReader(input_files=[str(path)], filename_as_id=True).load_data()
    return documents[:limit] if limit else documents


def _fail(error: Exception) -> None:
    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _run(action: Any) -> None:
    """Run a command body; the package's errors and invalid settings end in one readable line, exit code 2."""
    try:
        action()
    except (TwoStageError, ValidationError) as error:
        _fail(error)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")


@app.command()
def ingest(
    path: Annotated[Path, typer.Argument(help="Folder or file of documents, or a BEIR corpus.jsonl.", exists=True)],
    limit: Annotated[Optional[int], typer.Option(help="Ingest only the first N documents.")] = None,
    config: ConfigOption = None,
    collection: CollectionOption = None,
    persist_dir: PersistDirOption = None,
    chroma_host: HostOption = None,
    chroma_port: PortOption = None,
    embed_model: EmbedOption = None,
) -> None:
    """Chunk, embed and store documents (re-runs add nothing twice)."""

    def action() -> None:
        settings = load_settings(
            config,
            collection=collection,
            persist_dir=persist_dir,
            chroma_host=chroma_host,
            chroma_port=chroma_port,
            embed_model=embed_model,
        )
        report = ingest_documents(load_documents(path, limit), settings)
        typer.echo(
            f"{report.documents} documents -> {report.chunks} chunks: {report.added} added, "
            f"{report.already_stored} already stored; collection {report.collection!r} now holds "
            f"{report.stored_total} ({report.seconds:.1f}s)"
        )

    _run(action)


@app.command()
def query(
    text: Annotated[str, typer.Argument(help="The query.")],
    config: ConfigOption = None,
    collection: CollectionOption = None,
    persist_dir: PersistDirOption = None,
    chroma_host: HostOption = None,
    chroma_port: PortOption = None,
    embed_model: EmbedOption = None,
    rerank_model: RerankOption = None,
    recall_k: RecallOption = None,
    top_k: TopOption = None,
) -> None:
    """Two-stage search: the final top_k with stage-1 rank -> final rank, both scores and timings."""

    def action() -> None:
        settings = load_settings(
            config,
            collection=collection,
            persist_dir=persist_dir,
            chroma_host=chroma_host,
            chroma_port=chroma_port,
            embed_model=embed_model,
            rerank_model=rerank_model,
            recall_k=recall_k,
            top_k=top_k,
        )
        results = build_two_stage_retriever(settings).retrieve(text)
        typer.echo(format_results(results))

    _run(action)


def format_results(results: list[Any]) -> str:
    """A table of stage-1 rank -> final rank, both scores, and the text's start; timings underneath."""
    lines = [f"{'stage1 -> final':>15}  {'stage1 score':>12}  {'rerank score':>12}  text"]
    for scored in results:
        info = stage_info(scored)
        snippet = scored.node.get_content().replace("\n", " ")[:70]
        lines.append(
            f"{info['stage1_rank']:>6} -> {info['final_rank']:<5}  {info['stage1_score']:>12.4f}  "
            f"{info['rerank_score']:>12.4f}  {snippet}"
        )
    if results:
        info = stage_info(results[0])
        lines.append(
            f"stage 1: {info['stage1_ms']:.0f} ms | stage 2: {info['stage2_ms']:.0f} ms for "
            f"{info['pairs_scored']} pairs ({info['pairs_truncated']} truncated)"
        )
    return "\n".join(lines)


@app.command()
def info(
    config: ConfigOption = None,
    collection: CollectionOption = None,
    persist_dir: PersistDirOption = None,
    chroma_host: HostOption = None,
    chroma_port: PortOption = None,
) -> None:
    """The collection: where it lives, how many nodes, which model wrote it, dimension and distance space."""

    def action() -> None:
        settings = load_settings(
            config, collection=collection, persist_dir=persist_dir, chroma_host=chroma_host, chroma_port=chroma_port
        )
        target = store.open_collection(settings)
        contract = store.CollectionContract.of(target)
        typer.echo(f"collection:      {target.name} in {store.describe_store(settings)}")
        typer.echo(f"nodes:           {target.count()}")
        typer.echo(f"embedding model: {contract.embed_model if contract else 'not recorded'}")
        typer.echo(f"dimension:       {contract.dimension if contract else 'not recorded'}")
        typer.echo(f"distance space:  {store.distance_space(target)}")
        typer.echo(f"rerank model:    {settings.rerank_model} (recall_k={settings.recall_k}, top_k={settings.top_k})")

    _run(action)
