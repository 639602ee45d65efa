"""Documents -> chunks -> embeddings -> writes to the store: validated, idempotent, crash-safe, with progress."""

from llama_index_twostage.ingest.documents import validate_document
from llama_index_twostage.ingest.ingestion import DeleteReport, IngestReport, delete_documents, ingest_into
from llama_index_twostage.ingest.transform import Chunking

__all__ = ["Chunking", "DeleteReport", "IngestReport", "delete_documents", "ingest_into", "validate_document"]
