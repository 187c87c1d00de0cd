"""Label Studio tasks: what alft sends to be labeled, as a file or by ``alft labelstudio push``.

One builder, :func:`label_studio_tasks`, makes the tasks for both routes, so a pushed task and
a task imported from ``query --format label-studio``'s file are the same. Each task is
``{"data": {"image", "alft_key", "alft_round", "rank", "score", "cluster"}, "predictions":
[...]}``: ``alft_key`` lets an export be read back without matching URLs, ``alft_round``
tells a push which of its tasks a project already holds. Rows with model probabilities get
one prediction pre-selecting the suggested classes (p >= 0.5); rows without a model (the
initial list, or strategies that ran without one) get none, so nothing pretends to be a
suggestion. The prediction's ``score`` is :func:`order_score` of the rank, so that sorting
the data manager by prediction score ascending lists the images in alft's order.

Images: Label Studio shows a file of its own machine at ``/data/local-files/?d=<path relative
to LOCAL_FILES_DOCUMENT_ROOT>`` when started with ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=
true`` and a Local Files storage of the project holds the file's folder
(:func:`local_files_url`). ``--image-url-prefix`` replaces that with any URL the labelers'
browsers can load. Keys are percent-encoded either way: ``river bank/tile #1.jpg`` would
otherwise be cut at ``#`` (and ``&``, ``?``) by every URL parser.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from alft_cli.atomic import atomic_write_text
from alft_cli.errors import OptionError
from alft_cli.labels.base import check_writable_classes
from alft_cli.labels.queryfiles import QueryRow, finite_or_none, suggested_classes

LS_FROM_NAME = "labels"
LOCAL_FILES_PREFIX = "/data/local-files/?d="
DOCUMENT_ROOT_ENV = "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"
SERVING_ENV = "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"
README_NAME = "README.txt"


def order_score(rank: int, n: int) -> float:
    """The prediction score of the image ranked ``rank`` (1 = label first) of ``n``.

    ``rank / (n + 1)``: strictly inside (0, 1) and increasing with the rank, so sorting by
    prediction score ascending lists the images in alft's order. It is an order, not the
    model's confidence.
    """
    if not 1 <= rank <= n:
        raise ValueError(f"rank {rank} outside 1..{n}")
    return rank / (n + 1)


def document_root(given: Path | str | None = None) -> Path:
    """Label Studio's LOCAL_FILES_DOCUMENT_ROOT as alft assumes it: ``given``, else the
    environment variable (set in the shell that starts Label Studio), else ``/`` (Label
    Studio's default). Made absolute without following links, as Label Studio compares it."""
    value = given if given is not None else os.environ.get(DOCUMENT_ROOT_ENV) or "/"
    return Path(os.path.abspath(os.path.expanduser(str(value))))


def local_files_url(path: Path | str, root: Path | str) -> str:
    """The URL Label Studio serves ``path`` at: relative to its document root ``root``,
    percent-encoded.

    Raises:
        OptionError: If ``path`` is not inside ``root``.
    """
    path, root = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    if root not in path.parents:
        raise OptionError(
            f"{path} is not inside Label Studio's document root {root}: start Label Studio "
            f"with {DOCUMENT_ROOT_ENV} set to a folder that holds the archive (and set it "
            "here too, or give --document-root), or give --image-url-prefix")
    rel = PurePosixPath(*path.relative_to(root).parts).as_posix()
    return LOCAL_FILES_PREFIX + quote(rel, safe="/")


def image_url_function(archive: Path, *, prefix: str | None = None,
                       root: Path | str | None = None) -> Callable[[str], str]:
    """Sample key -> image URL: ``prefix`` + the encoded key, or the local-files URL.

    Checked once, here: the archive must be a folder below the document root (Label Studio
    refuses a Local Files storage at the root itself).
    """
    if prefix:
        return lambda key: prefix + quote(key, safe="/")
    root = document_root(root)
    archive = Path(os.path.abspath(archive))
    if archive == root:
        raise OptionError(
            f"the archive {archive} is Label Studio's document root itself; Label Studio "
            "accepts a Local Files storage only below it: set the root to a parent folder")
    base = local_files_url(archive / "x", root)[: -len("x")]
    return lambda key: base + quote(PurePosixPath(key).as_posix(), safe="/")


def with_quicklooks(image_url: Callable[[str], str], rows: Sequence[QueryRow], folder: Path,
                    prefix: str | None = None, root: Path | str | None = None
                    ) -> Callable[[str], str]:
    """``image_url``, except that rows with a quicklook (multi-band samples, which no browser
    shows) point to their PNG: ``prefix`` + its path relative to ``folder`` (the query file's
    folder) when a prefix is given, else its local-files URL (``folder`` must then be below
    the document root too).
    """
    quick = {r.filename: r.quicklook for r in rows if r.quicklook}
    if not quick:
        return image_url
    if prefix:
        return lambda key: (prefix + quote(quick[key], safe="/") if key in quick
                            else image_url(key))
    base = document_root(root)
    return lambda key: (local_files_url(folder / quick[key], base) if key in quick
                        else image_url(key))


def label_studio_tasks(rows: Sequence[QueryRow], classes: Sequence[str],
                       image_url: Callable[[str], str], model_version: str,
                       *, round_: int | None = None, size: int | None = None,
                       ) -> list[dict[str, Any]]:
    """The Label Studio tasks for ``rows`` (see the module docstring).

    Args:
        rows: The images to label, with their query rank.
        classes: The project classes, in project order.
        image_url: Sample key -> the URL Label Studio loads the image from.
        model_version: Shown next to the prediction, e.g. ``"alft-r3"``.
        round_: The query's round (``data.alft_round``); left out when None.
        size: The query's size, for the order score (default: the largest rank).
    """
    names = check_writable_classes(classes)
    size = size or max((int(r.rank) for r in rows), default=1)
    tasks = []
    for r in rows:
        data: dict[str, Any] = {"image": image_url(r.filename), "alft_key": r.filename}
        if round_ is not None:
            data["alft_round"] = int(round_)
        data.update(rank=int(r.rank), score=finite_or_none(r.score), cluster=int(r.cluster))
        task: dict[str, Any] = {"data": data}
        if r.probabilities is not None:
            task["predictions"] = [{
                "model_version": model_version,
                "score": order_score(int(r.rank), size),
                "result": [{"from_name": LS_FROM_NAME, "to_name": "image", "type": "choices",
                            "value": {"choices": suggested_classes(r.probabilities, names)}}],
            }]
        tasks.append(task)
    return tasks


def write_label_studio_tasks(path: Path, rows: Sequence[QueryRow], classes: Sequence[str],
                             image_url: Callable[[str], str], model_version: str,
                             *, round_: int | None = None) -> None:
    """Write :func:`label_studio_tasks` as a Label Studio task file (JSON, replaced
    atomically); use with the config from :func:`label_studio_config`."""
    tasks = label_studio_tasks(rows, classes, image_url, model_version, round_=round_)
    atomic_write_text(path, json.dumps(tasks, ensure_ascii=False, indent=1) + "\n")


_XML_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}
_XML_ESCAPES.update({"\n": "&#10;", "\r": "&#13;", "\t": "&#9;"})


def _xml_attr(value: str) -> str:
    # Escape what an XML attribute cannot hold as-is; \n, \r and \t would be folded to
    # spaces by any XML parser.
    return "".join(_XML_ESCAPES.get(ch, ch) for ch in value)


def label_studio_config(classes: Sequence[str]) -> str:
    """Return the Label Studio labeling config (XML) for multi-label image classification.

    The field names (``image``, ``labels``) are the ones :func:`label_studio_tasks`
    writes and :func:`~alft_cli.labels.read_label_file` expects.

    Args:
        classes: The project classes, in project order.

    Returns:
        The config, one line, e.g. ``<View><Image name="image" value="$image"/>...``.
    """
    names = check_writable_classes(classes)
    choices = "".join(f'<Choice value="{_xml_attr(c)}"/>' for c in names)
    return (
        '<View><Image name="image" value="$image"/>'
        f'<Choices name="{LS_FROM_NAME}" toName="image" choice="multiple" showInLine="true">'
        f"{choices}</Choices></View>"
    )


def write_label_studio_files(query_path: Path, rows: Sequence[QueryRow], classes: Sequence[str],
                             archive: Path, model_version: str, *, round_: int,
                             image_url_prefix: str | None = None,
                             root: Path | str | None = None,
                             project_dir: Path | None = None) -> list[Path]:
    """Write a query for Label Studio next to the query file: the tasks
    (``<query>.label-studio.json``), the labeling config (``label-studio-config.xml``) and a
    ``README.txt`` on how to make Label Studio show the images and bring the answers back.
    ``root`` is Label Studio's document root (default: :func:`document_root`).

    Raises:
        OptionError: If the archive is not below the document root (without a prefix).
    """
    image_url = with_quicklooks(image_url_function(archive, prefix=image_url_prefix, root=root),
                                rows, query_path.parent, image_url_prefix, root)
    tasks = query_path.with_suffix(".label-studio.json")
    write_label_studio_tasks(tasks, rows, classes, image_url, model_version, round_=round_)
    config_xml = query_path.with_name("label-studio-config.xml")
    atomic_write_text(config_xml, label_studio_config(classes))
    readme = query_path.with_name(README_NAME)
    atomic_write_text(readme, readme_text(
        tasks.name, config_xml.name, archive, image_url_prefix,
        None if image_url_prefix else document_root(root),
        project_dir, any(r.probabilities is not None for r in rows)))
    return [tasks, config_xml, readme]


def readme_text(tasks_name: str, config_name: str, archive: Path, prefix: str | None,
                root: Path | None, project_dir: Path | None, predictions: bool) -> str:
    """The README.txt written next to a Label Studio task file."""
    p = f" -p {project_dir}" if project_dir else " -p PROJECT"
    if prefix:
        serve = (f"The tasks load images from {prefix}<path in the archive>: the labelers'\n"
                 "browsers must be able to open those URLs. No Local Files storage is needed.\n")
    else:
        serve = (
            f"The tasks load images through Label Studio's local-files serving, from paths\n"
            f"relative to its document root {root}. Start Label Studio on the machine that\n"
            "holds the archive with:\n\n"
            f"    export {SERVING_ENV}=true\n"
            f"    export {DOCUMENT_ROOT_ENV}={root}\n"
            "    label-studio start\n\n"
            "In the project, add a source storage (Settings > Cloud Storage > Add Source\n"
            f"Storage > Local files) with the absolute path {os.path.abspath(archive)}.\n"
            "Do not sync it: the task file already lists the images to label.\n"
            "Images elsewhere (another machine, a web server, a bucket)? Write the task file\n"
            "again with --image-url-prefix URL: each image is then loaded from URL + its\n"
            "percent-encoded path in the archive.\n")
    order = ("   The prediction score is alft's order, not a confidence: sort the data\n"
             "   manager by Prediction score ascending (or by ID) to label first what alft\n"
             "   ranked first. The pre-selected answer is the model's suggestion.\n"
             if predictions else
             "   Tasks are in alft's order: sort the data manager by ID. No model chose\n"
             "   these images, so there are no model suggestions.\n")
    return (
        "Labeling these images in Label Studio\n"
        "=====================================\n\n"
        f"{tasks_name}  the tasks, one per image\n"
        f"{config_name}  the labeling config (Settings > Labeling Interface > Code)\n\n"
        f"{serve}\n"
        f"1. Create a project and paste {config_name} as its labeling config.\n"
        f"2. Import {tasks_name} (Import button).\n"
        f"3. Label.\n{order}"
        "   Submit an empty answer for an image where no class is present; a skipped\n"
        "   image stays unlabeled.\n"
        "4. Export > JSON, then:  alft import-labels EXPORT.json" + p + "\n\n"
        "Without these clicks: alft labelstudio push" + p + ", later alft labelstudio pull"
        + p + "\n"
        "creates or fills the project, connects the storage and brings the answers back.\n"
    )
