"""The ``files`` destination: exports (``goal: export_data``) as CSV or Parquet files."""

from destinations.files.adapter import FilesDestination

__all__ = ["FilesDestination"]
