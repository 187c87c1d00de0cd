"""`alft labelstudio push|pull|status`: the pending query in a live Label Studio project.

Parsing only: every command reads the API key (LABEL_STUDIO_API_KEY or --api-key-file; it is
never printed) and makes one :mod:`alft_cli.api` call. Registered on the main app by
:mod:`alft_cli.cli`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from alft_cli.errors import OptionError

KEY_ENV = "LABEL_STUDIO_API_KEY"

labelstudio_app = typer.Typer(
    name="labelstudio",
    help=(
        "Label Studio, live: push the pending query into a Label Studio project, pull the "
        "answers back (label-studio-sdk).\n\n"
        "\b\nExamples:\n"
        "  export LABEL_STUDIO_API_KEY=...   # Label Studio: Account & Settings\n"
        "  alft labelstudio push -p proj --url http://localhost:8080 --create 'my archive'\n"
        "  alft labelstudio pull -p proj --wait"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

out = Console(highlight=False, soft_wrap=True)
ProjectOpt = Annotated[Path, typer.Option("--project", "-p", help="Project folder.")]
ImageUrlPrefixOpt = Annotated[str | None, typer.Option(
    help="Label Studio loads each image from PREFIX + its percent-encoded path in the archive "
         "(e.g. http://files.example.org/archive/); default: Label Studio's local-files "
         "serving of the archive.")]
DocumentRootOpt = Annotated[Path | None, typer.Option(
    help="Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT: image URLs are relative to "
         "it (default: that variable in this shell, else /, Label Studio's default).")]
UrlOpt = Annotated[str | None, typer.Option(
    help="The Label Studio server (default: where the last push went, else LABEL_STUDIO_URL, "
         "else http://localhost:8080).")]
KeyFileOpt = Annotated[Path | None, typer.Option(
    help=f"File whose first line is the API key (default: the {KEY_ENV} variable).")]


def _api_key(file: Path | None) -> str:
    """The API key from --api-key-file or LABEL_STUDIO_API_KEY (never echoed)."""
    if file is not None:
        try:
            lines = file.read_text(encoding="utf-8").strip().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise OptionError(f"--api-key-file {file}: cannot read it "
                              f"({getattr(e, 'strerror', None) or type(e).__name__})") from None
        if not lines or not lines[0].strip():
            raise OptionError(f"--api-key-file {file} is empty")
        return lines[0].strip()
    key = os.environ.get(KEY_ENV, "").strip()
    if not key:
        raise OptionError(f"no Label Studio API key: set {KEY_ENV} or give --api-key-file FILE "
                          "(Label Studio: Account & Settings > Access Token)")
    return key


@labelstudio_app.command("push")
def push(
    project: ProjectOpt,
    url: UrlOpt = None,
    ls_project: Annotated[int | None, typer.Option(
        "--ls-project", help="An existing Label Studio project (its id, as in "
        ".../projects/ID); its labeling config must name the project's classes. Default: "
        "the project pushed to last.")] = None,
    create: Annotated[str | None, typer.Option(
        help="Create a Label Studio project with this title and alft's labeling config.")
    ] = None,
    image_url_prefix: ImageUrlPrefixOpt = None,
    document_root: DocumentRootOpt = None,
    api_key_file: KeyFileOpt = None,
) -> None:
    """Send the pending images to a Label Studio project as tasks (again: no duplicates).

    Each image becomes a task with the model's suggestion as a prediction; the prediction
    score is alft's order, so sorting the data manager by Prediction score ascending (or by
    ID) lists the images alft ranked first. Label Studio shows them through a Local Files
    storage that push connects for the archive (never synced): start Label Studio on the
    machine holding the archive with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and
    LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT set to a folder above the archive (push loads one
    image through the server to check); --image-url-prefix loads them from anywhere else.

    \b
    Examples:
      alft labelstudio push -p proj --url http://localhost:8080 --create 'round 1'
    """
    from alft_cli.labelstudio import api as ls_api

    r = ls_api.push(project, api_key=_api_key(api_key_file), url=url,
                             ls_project=ls_project, create=create,
                             image_url_prefix=image_url_prefix, document_root=document_root)
    for note in r.notes:
        out.print(f"note: {note}")
    made = "created" if r.created else "in"
    rounds = ", ".join(map(str, r.rounds))
    out.print(f"pushed {r.pushed} pending images (round {rounds}) to Label Studio project "
              f"{r.project_id} {r.title!r} ({made}) at {r.url}: {r.added} new tasks, "
              f"{r.existing} already there")
    out.print(f"images: {r.images}")
    out.print(f"label them: {r.url}/projects/{r.project_id}/data (sort by Prediction score "
              "ascending, or by ID, for alft's order)")
    out.print(f"next: alft labelstudio pull -p {project}  (--wait to wait for all answers)")


@labelstudio_app.command("pull")
def pull(
    project: ProjectOpt,
    wait: Annotated[bool, typer.Option(
        help="Look again every --interval seconds until no pushed task is unanswered "
             "(at most --timeout seconds).")] = False,
    timeout: Annotated[float, typer.Option(help="With --wait: give up after this many "
                                           "seconds.")] = 3600.0,
    interval: Annotated[float, typer.Option(help="With --wait: seconds between looks.")
                        ] = 30.0,
    url: UrlOpt = None,
    api_key_file: KeyFileOpt = None,
) -> None:
    """Import the answers given in Label Studio (exactly as import-labels would).

    The answered tasks are saved as a Label Studio JSON export in the round folder and
    imported all or nothing (newest annotation wins; an unknown class refuses the pull,
    naming the task). Skipped and unanswered images stay pending: run pull again later.

    \b
    Examples:
      alft labelstudio pull -p proj --wait --interval 60
    """
    from alft_cli.labelstudio import api as ls_api

    r = ls_api.pull(project, api_key=_api_key(api_key_file), url=url, wait=wait,
                             timeout_s=timeout, interval_s=interval)
    for note in r.notes:
        out.print(f"note: {note}")
    for path in r.files:
        out.print(f"imported {path}")
    out.print(f"Label Studio project {r.project_id} at {r.url}: {r.imported} answered images "
              f"imported; {r.skipped} skipped and {r.untouched} unanswered stay pending")
    if r.not_pushed:
        out.print(f"{r.not_pushed} pending images have no task: alft labelstudio push -p "
                  f"{project}")
    if r.pending_left:
        out.print(f"still pending: {r.pending_left}; next: alft labelstudio pull -p {project} "
                  "when more are answered")
    else:
        out.print(f"every queried image is labeled; next: alft finetune -p {project}")


@labelstudio_app.command("status")
def status(
    project: ProjectOpt,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    url: UrlOpt = None,
    api_key_file: KeyFileOpt = None,
) -> None:
    """Where the pending images were pushed and how many are answered; changes nothing.

    \b
    Examples:
      alft labelstudio status -p proj --json
    """
    from alft_cli.labelstudio import api as ls_api

    info = ls_api.status(project, api_key=_api_key(api_key_file), url=url)
    if as_json:
        out.print(json.dumps(info), markup=False)
        return
    out.print(f"Label Studio project {info['project_id']} {info['title']!r} at {info['url']} "
              f"(last push {info['last_push_at']})")
    out.print(f"pending images pushed: {info['pushed']}: {info['done']} answered (not "
              f"imported yet), {info['skipped']} skipped, {info['untouched']} unanswered")
    if info["not_pushed"]:
        out.print(f"pending images without a task: {info['not_pushed']}")
