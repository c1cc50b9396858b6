"""MkDocs hook: the tutorial notebooks live in ``tutorials/`` (beside ``docs/``); add them to the site.

They are added before mkdocs-jupyter sees the files (priority above its default 0), under ``tutorials/``, so
``nav`` names them as ``tutorials/NN_slug.ipynb`` and mkdocs-jupyter renders them (without executing them).
Every notebook in the folder must be in ``nav``: ``validation.omitted_files: warn`` + ``--strict`` fails
the build on one that is not.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

TUTORIALS = Path(__file__).resolve().parents[2] / "tutorials"


@event_priority(100)
def on_files(files: Files, config: MkDocsConfig) -> Files:
    for notebook in sorted(TUTORIALS.glob("*.ipynb")):
        files.append(
            File(
                f"tutorials/{notebook.name}",
                src_dir=str(TUTORIALS.parent),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files
