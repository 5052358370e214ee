"""Import an export over HTTP: the CLI's validation and all-or-nothing loading (RevOps only)."""

from __future__ import annotations

import shutil
import tempfile
from datetime import datetime
from importlib import resources
from pathlib import Path, PurePath
from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from pydantic import BaseModel

from features.data.calendar import to_timestamp
from features.data.loading import load_export
from features.data.mapping import Mapping, load_mapping
from features.errors import InputError
from serving.api.deps import RevOpsDep, SettingsDep, StateDep
from serving.api.errors import AUTHENTICATED, ValidationErrorBody, error

router = APIRouter(prefix="/v1/data", tags=["data"], responses=AUTHENTICATED)

_SUFFIXES = (".csv", ".parquet")


class ImportReport(BaseModel):
    files: list[str]
    inserted: dict[str, int]
    updated_deals: int
    recorded_changes: int
    notes: list[str]


def shipped_mappings() -> dict[str, str]:
    """Mapping name (file stem) -> YAML file shipped in ``features/data/mappings``."""
    folder = resources.files("features.data").joinpath("mappings")
    return {
        Path(entry.name).stem: entry.name
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml") and not entry.name.endswith("-stages.yaml")
    }


def _mapping(name: str | None, upload: UploadFile | None, folder: Path) -> Mapping | None:
    if upload is not None and upload.filename:
        path = folder / "mapping.yaml"
        with open(path, "wb") as out:
            shutil.copyfileobj(upload.file, out)
        return load_mapping(path)
    if not name:
        return None
    known = shipped_mappings()
    if name not in known:
        raise InputError(
            f"mapping: unknown mapping {name!r}; shipped: {sorted(known)}", field="mapping"
        )
    ref = resources.files("features.data").joinpath("mappings", known[name])
    with resources.as_file(ref) as path:
        return load_mapping(path)


def _save(files: list[UploadFile], folder: Path, limit: int) -> list[str]:
    names: list[str] = []
    total = 0
    for upload in files:
        name = PurePath(upload.filename or "").name
        if not name:
            raise InputError(
                "files: every upload needs a file name (deals.csv, Opportunity.csv...)",
                field="files",
            )
        if not name.lower().endswith(_SUFFIXES):
            raise InputError(f"files: {name!r} is not a .csv or .parquet file", field="files")
        if name in names:
            raise InputError(f"files: {name!r} was sent twice", field="files")
        with open(folder / name, "wb") as out:
            while chunk := upload.file.read(1 << 20):
                total += len(chunk)
                if total > limit:
                    raise InputError(f"files: upload larger than {limit:,} bytes", field="files")
                out.write(chunk)
        names.append(name)
    if not names:
        raise InputError("files: send at least the deals file", field="files")
    return names


@router.post(
    "/import",
    response_model=ImportReport,
    summary="import CSV/Parquet files of a CRM export: all of it, or nothing",
    responses={
        422: error("the export was refused; nothing changed", model=ValidationErrorBody),
        503: error("another import holds the store; try again when it is done"),
    },
)
def import_export(
    caller: RevOpsDep,
    state: StateDep,
    settings: SettingsDep,
    files: Annotated[list[UploadFile], File(description="the export's files")],
    mapping: Annotated[
        str | None, Form(description="a shipped mapping: salesforce, hubspot")
    ] = None,
    mapping_file: Annotated[UploadFile | None, File(description="your own mapping YAML")] = None,
    exported_at: Annotated[datetime | None, Form(description="when the export was taken")] = None,
    strict: Annotated[
        bool, Form(description="refuse descriptive values the mapping does not map")
    ] = False,
    encoding: Annotated[
        str | None, Form(description="text encoding of the CSV files, e.g. windows-1252")
    ] = None,
) -> ImportReport:
    with tempfile.TemporaryDirectory(prefix="pipecast-import-") as tmp:
        folder = Path(tmp)
        spec = _mapping(mapping, mapping_file, folder)
        export = folder / "export"
        export.mkdir()
        names = _save(files, export, settings.max_upload_bytes)
        when = to_timestamp(exported_at).to_pydatetime() if exported_at else None
        loaded = load_export(
            export,
            state.store.path,
            stages=state.stages,
            mapping=spec,
            exported_at=when,
            strict=strict,
            encoding=encoding,
            default_currency=settings.currency,
        )
    return ImportReport(
        files=names,
        inserted=loaded.report.inserted,
        updated_deals=loaded.report.updated_deals,
        recorded_changes=loaded.report.recorded_changes,
        notes=loaded.notes,
    )
