"""A running Label Studio server: projects, tasks, images and answers (label-studio-sdk).

``alft labelstudio push`` and ``pull`` talk to the server only through :class:`Client`, a thin
layer over the official client (``label-studio-sdk``) that adds what alft needs on top:

* **One line per failure.** Every SDK call runs inside :meth:`Client._calling`, which turns a
  refused API key (401/403), an unreachable or silent server, a missing project or task (404)
  and a refused request (400) into one :class:`~alft_cli.errors.LabelStudioError` line that
  names the server and what alft was doing. The API key is never part of a message: the SDK
  sends it in a header, and neither response headers nor bodies are quoted.
* **Idempotent push.** :meth:`Client.push` first lists the project's tasks and recognises
  alft's own by ``data.alft_key`` and ``data.alft_round``; it imports only the missing ones,
  then lists again to learn their ids. Pushing the same query twice, or again after a push
  that died half-way, adds no duplicate task.
* **Images through Local Files storage.** Label Studio serves a file of its own machine at
  ``/data/local-files/?d=<path relative to LOCAL_FILES_DOCUMENT_ROOT>``, and only when
  ``LOCAL_FILES_SERVING_ENABLED`` is true and a Local Files storage of the project holds the
  file's folder. :meth:`Client.ensure_local_storage` connects such a storage (never synced: it
  would turn every file of the folder into a task) and :meth:`Client.image_status` fetches one
  image the way the labeling page will, so a wrong document root is found at push time, not
  by a labeler looking at broken images. Uploading the images instead was rejected: it copies
  the archive into Label Studio's media folder and creates tasks alft cannot tag with its
  keys. A server on another machine is reached with ``--image-url-prefix`` (any URL the
  labelers' browsers can load).
* **Answers as an export.** :meth:`Client.export` downloads the pushed tasks with Label
  Studio's own JSON export, so a pull reads exactly the file a person would download.

The tasks themselves (image URLs, predictions, order scores) are made by
:mod:`alft_cli.labels.lstasks`, the same for a push as for a task file. Tasks are imported in
alft's order, so their ids ascend in that order too.
"""

from __future__ import annotations

import contextlib
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from alft_cli.errors import LabelStudioError

DEFAULT_URL = "http://localhost:8080"
TIMEOUT_S = 30.0
# Task ids per export request: they travel in the URL (ids[]=...), which servers cap.
EXPORT_BATCH = 200
KEY_FIELD = "alft_key"
ROUND_FIELD = "alft_round"


@dataclass(frozen=True)
class LsProject:
    """A Label Studio project as alft sees it."""

    id: int
    title: str
    label_config: str


@dataclass(frozen=True)
class LsTask:
    """A task of a Label Studio project; ``key``/``round`` are None for tasks alft did not
    make."""

    id: int
    key: str | None
    round: int | None
    annotations: int = 0  # submitted or skipped


@dataclass(frozen=True)
class PushOutcome:
    """What :meth:`Client.push` did.

    Attributes:
        task_ids: ``(alft_key, alft_round)`` -> task id, for every task pushed.
        added: Tasks imported now; ``existing`` were there already.
        stale: Other tasks alft made in the project (earlier or cancelled queries) that
            nobody answered.
    """

    task_ids: dict[tuple[str, int], int]
    added: int
    existing: int
    stale: int = 0


# ---- pure helpers ---------------------------------------------------------------------------


def check_url(url: str) -> str:
    """Return the server URL without a trailing slash; refuse what cannot be a server URL.

    Credentials in the URL (``http://user:pw@host``) are refused: alft stores the URL in the
    project, and the API key goes in ``LABEL_STUDIO_API_KEY`` instead.
    """
    text = (url or "").strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LabelStudioError(f"--url {text!r}: give the server's address, e.g. {DEFAULT_URL}")
    if parts.username is not None or parts.password is not None:
        raise LabelStudioError(
            "--url: leave the user name and password out of the URL; alft keeps the URL in "
            "the project, and takes the API key from LABEL_STUDIO_API_KEY or --api-key-file"
        )
    if parts.query or parts.fragment:
        raise LabelStudioError(f"--url {text!r}: a server URL has no '?' or '#' part")
    return text.rstrip("/")


def config_problems(label_config: str, classes: Sequence[str]) -> list[str]:
    """Why a labeling config cannot label this project's images, or ``[]`` when it can.

    It can when one ``<Choices choice="multiple">`` names exactly the project classes (as
    import-labels compares them: ignoring case and surrounding spaces) and points at an
    ``<Image value="$image">``, the field alft's tasks fill. More classes in the config would
    let labelers give answers alft refuses; fewer would force "absent" on the missing ones.
    """
    try:
        root = ET.fromstring(label_config or "")
    except ET.ParseError as e:
        return [f"its labeling config is not valid XML ({e})"]
    images = {el.get("name"): el.get("value") for el in root.iter() if el.tag == "Image"}
    wanted = {c.strip().casefold(): c for c in classes}
    fields = []
    for el in root.iter():
        if el.tag != "Choices":
            continue
        # A result holds a choice's alias when it has one, else its value.
        names = [c.get("alias") or c.get("value") or "" for c in el.iter() if c.tag == "Choice"]
        folded = {n.strip().casefold(): n for n in names}
        fields.append((el, folded))
    matching = [(el, folded) for el, folded in fields if set(folded) & set(wanted)]
    if not matching:
        return [
            "its labeling config has no Choices naming the project classes "
            f"({', '.join(classes)}); create the project with --create, or paste alft's "
            "config (label-studio-config.xml) into its Labeling Interface"
        ]
    if len(matching) > 1:
        names = ", ".join(repr(el.get("name")) for el, _ in matching)
        return [f"its labeling config has several Choices with project classes ({names}); "
                "alft reads one"]
    el, folded = matching[0]
    problems = []
    missing = [wanted[k] for k in wanted if k not in folded]
    extra = [folded[k] for k in folded if k not in wanted]
    if missing:
        problems.append(f"its Choices {el.get('name')!r} lacks the project classes "
                        f"{', '.join(missing)}")
    if extra:
        problems.append(f"its Choices {el.get('name')!r} offers {', '.join(extra)}, which "
                        "are not project classes")
    if (el.get("choice") or "single") != "multiple":
        problems.append(f"its Choices {el.get('name')!r} allows one choice per image; alft's "
                        'images can have several classes: set choice="multiple"')
    target = el.get("toName")
    if images.get(target) != "$image":
        problems.append(f"its Choices {el.get('name')!r} does not label an "
                        f'<Image value="$image"> (alft\'s tasks put the image in data.image)')
    return problems


# ---- the client -----------------------------------------------------------------------------


class Client:
    """A session with one Label Studio server (``label-studio-sdk`` underneath).

    Args:
        url: The server, e.g. ``http://localhost:8080``.
        api_key: A legacy API token or a Personal Access Token (Account & Settings).
        timeout: Seconds to wait for one answer.

    Raises:
        LabelStudioError: If the SDK is missing, the URL is not one, or the key is an expired
            Personal Access Token.
    """

    def __init__(self, url: str, api_key: str, *, timeout: float = TIMEOUT_S) -> None:
        self.url = check_url(url)
        self.timeout = timeout
        if not api_key or not api_key.strip():
            raise LabelStudioError(
                "no Label Studio API key: set LABEL_STUDIO_API_KEY or give --api-key-file "
                "(the key is under Account & Settings in Label Studio)")
        try:
            from label_studio_sdk.client import LabelStudio
        except ImportError:
            raise LabelStudioError(
                "talking to Label Studio needs label-studio-sdk: pip install 'alft[labelstudio]'"
            ) from None
        # The SDK checks a Personal Access Token's expiry here already.
        with self._calling("reading the API key"):
            self._sdk = LabelStudio(base_url=self.url, api_key=api_key.strip(), timeout=timeout)

    def __repr__(self) -> str:  # never the key
        return f"Client({self.url!r})"

    # -- error mapping --------------------------------------------------------------------
    @contextlib.contextmanager
    def _calling(self, what: str, missing: str | None = None) -> Iterator[None]:
        """Turn whatever the SDK raises while ``what`` into one LabelStudioError line.

        ``from None``: the SDK's exceptions carry response headers and bodies, which have no
        place in a message (and would be shown with a traceback under ALFT_DEBUG).
        """
        import httpx
        from label_studio_sdk.core.api_error import ApiError
        from label_studio_sdk.core.parse_error import ParsingError

        try:
            yield
        except ApiError as e:
            raise LabelStudioError(self._api_message(e, what, missing)) from None
        except ParsingError as e:
            raise LabelStudioError(
                f"Label Studio at {self.url} answered in a form label-studio-sdk does not "
                f"know while {what} (HTTP {e.status_code}); is the server a Label Studio "
                "version this SDK supports?") from None
        except httpx.TimeoutException:
            raise LabelStudioError(
                f"Label Studio at {self.url} did not answer within {self.timeout:g} s while "
                f"{what}") from None
        except httpx.TransportError as e:
            reason = _one_line(str(e)) or type(e).__name__
            raise LabelStudioError(
                f"cannot reach Label Studio at {self.url} while {what} ({reason}); is the "
                "server running, and is --url right?") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise LabelStudioError(
                f"{self.url} did not answer like Label Studio while {what} (not JSON); is "
                "--url right?") from None

    def _api_message(self, e: Any, what: str, missing: str | None) -> str:
        status = e.status_code
        detail = _detail(e.body)
        said = f"{status}: {detail}" if detail else str(status)
        if status == 401:
            return (f"Label Studio at {self.url} refused the API key ({said}) while {what}: "
                    "check LABEL_STUDIO_API_KEY or --api-key-file")
        if status == 403:
            return (f"Label Studio at {self.url} does not allow this API key's user "
                    f"{what} ({said})")
        if status == 404 and missing:
            return missing
        if status == 404 or (isinstance(e.body, str) and status and status < 500):
            return (f"{self.url} has no Label Studio API for {what} ({status}); is --url the "
                    "Label Studio server?")
        if status == 400:
            return f"Label Studio at {self.url} refused {what} ({said})"
        return f"Label Studio at {self.url} failed while {what} ({said})"

    def _missing_project(self, project_id: int) -> str:
        return (f"Label Studio at {self.url} has no project {project_id} (deleted?); push to "
                "another with --ls-project ID or --create TITLE")

    # -- projects -------------------------------------------------------------------------
    def whoami(self) -> str:
        """The e-mail (or user name) the API key belongs to; checks the key."""
        with self._calling("checking the API key"):
            me = self._sdk.users.whoami()
        return str(getattr(me, "email", None) or getattr(me, "username", None) or me.id)

    def project(self, project_id: int) -> LsProject:
        """Read a project. Raises LabelStudioError when it does not exist."""
        with self._calling(f"reading project {project_id}", self._missing_project(project_id)):
            p = self._sdk.projects.get(id=int(project_id))
        return LsProject(int(p.id), str(p.title or ""), str(p.label_config or ""))

    def create_project(self, title: str, label_config: str, description: str = "") -> LsProject:
        """Create a project with ``label_config``."""
        with self._calling(f"creating project {title!r}"):
            p = self._sdk.projects.create(title=title, label_config=label_config,
                                          description=description)
        return LsProject(int(p.id), str(p.title or title), str(p.label_config or label_config))

    def delete_project(self, project_id: int) -> None:
        """Delete a project (alft only deletes one it has just created for a failed push)."""
        with self._calling(f"deleting project {project_id}", self._missing_project(project_id)):
            self._sdk.projects.delete(id=int(project_id))

    def check_project(self, project_id: int, classes: Sequence[str]) -> LsProject:
        """Read a project and refuse it unless its config labels ``classes`` (one line)."""
        project = self.project(project_id)
        problems = config_problems(project.label_config, classes)
        if problems:
            raise LabelStudioError(f"Label Studio project {project_id} ({project.title!r}) "
                                   f"cannot label this alft project: {'; '.join(problems)}")
        return project

    # -- images ---------------------------------------------------------------------------
    def ensure_local_storage(self, project_id: int, folder: Path) -> bool:
        """Connect a Local Files storage for ``folder`` unless one holding it is connected.

        The storage is never synced; it only lets Label Studio serve the files under it.
        Returns True when a storage was created.
        """
        folder = Path(folder).resolve()
        with self._calling(f"listing the storages of project {project_id}",
                           self._missing_project(project_id)):
            storages = self._sdk.import_storage.local.list(project=int(project_id))
        for storage in storages or []:
            path = getattr(storage, "path", None)
            if path and (folder == Path(path) or Path(path) in folder.parents):
                return False
        with self._calling(f"connecting Local Files storage {folder} to project {project_id}",
                           self._missing_project(project_id)):
            self._sdk.import_storage.local.create(
                project=int(project_id), path=str(folder), title="alft images",
                description="images of alft's tasks (not synced: alft creates the tasks)",
                use_blob_urls=True)
        return True

    def image_status(self, image_url: str) -> int:
        """HTTP status of loading ``image_url`` (a task's data.image) as the labeling page will.

        Goes through the SDK's own HTTP client (``_client_wrapper``: the SDK has no call for
        media) so that the request carries the same authentication as the API calls; the URL
        is sent exactly as written in the task, which tests its percent-encoding too.
        """
        wrapper = self._sdk._client_wrapper
        url = image_url if urlsplit(image_url).scheme else self.url + image_url
        with self._calling(f"loading the image {image_url}"):
            response = wrapper.httpx_client.httpx_client.request(
                "GET", url, headers=wrapper.get_headers(), timeout=self.timeout)
        return int(response.status_code)

    # -- tasks ----------------------------------------------------------------------------
    def tasks(self, project_id: int) -> list[LsTask]:
        """Every task of the project, with alft's key and round where alft made it."""
        out = []
        with self._calling(f"listing the tasks of project {project_id}",
                           self._missing_project(project_id)):
            for t in self._sdk.tasks.list(project=int(project_id), page_size=1000):
                data = t.data if isinstance(t.data, dict) else {}
                key = data.get(KEY_FIELD)
                round_ = data.get(ROUND_FIELD)
                answers = (t.total_annotations or 0) + (t.cancelled_annotations or 0)
                out.append(LsTask(int(t.id), key if isinstance(key, str) else None,
                                  round_ if isinstance(round_, int) else None, int(answers)))
        return out

    def import_tasks(self, project_id: int, tasks: Sequence[dict[str, Any]]) -> int:
        """Import tasks (with their predictions); returns how many Label Studio created.

        Sent without the SDK's retries: a retried import that the server had already done
        would duplicate the tasks. A push that fails here is simply pushed again.
        """
        if not tasks:
            return 0
        with self._calling(f"importing {len(tasks)} tasks into project {project_id}",
                           self._missing_project(project_id)):
            res = self._sdk.projects.import_tasks(id=int(project_id), request=list(tasks),
                                                  request_options={"max_retries": 0})
        return int(getattr(res, "task_count", None) or 0)

    def push(self, project_id: int, tasks: Sequence[dict[str, Any]]) -> PushOutcome:
        """Make sure the project holds each of ``tasks`` once; import only what is missing.

        A task is recognised by ``(data.alft_key, data.alft_round)``; ``tasks`` must carry
        both. They are imported in the order given, so their ids ascend in that order.
        """
        wanted = [(_task_key(t), t) for t in tasks]
        keys = [k for k, _ in wanted]
        if len(set(keys)) != len(keys):
            raise ValueError("tasks to push name a sample twice")

        def present() -> tuple[dict[tuple[str, int], int], int]:
            found: dict[tuple[str, int], int] = {}
            unanswered: set[tuple[str, int]] = set()
            for t in self.tasks(project_id):
                if t.key is not None and t.round is not None:
                    found.setdefault((t.key, t.round), t.id)  # a copy made by hand: oldest
                    if not t.annotations:
                        unanswered.add((t.key, t.round))
            return found, len(unanswered - set(keys))

        before, stale = present()
        missing = [t for k, t in wanted if k not in before]
        self.import_tasks(project_id, missing)
        after = present()[0] if missing else before
        lost = [k for k in keys if k not in after]
        if lost:
            raise LabelStudioError(
                f"Label Studio project {project_id} did not keep {len(lost)} of the imported "
                f"tasks (e.g. {lost[0][0]}); push again")
        return PushOutcome({k: after[k] for k in keys}, added=len(missing),
                           existing=len(keys) - len(missing), stale=stale)

    def export(self, project_id: int, task_ids: Sequence[int]) -> list[dict[str, Any]]:
        """Label Studio's JSON export of these tasks, annotated or not, in task id order.

        Tasks that no longer exist are simply absent; the caller compares ids.
        """
        out: list[dict[str, Any]] = []
        ids = sorted({int(i) for i in task_ids})
        for start in range(0, len(ids), EXPORT_BATCH):
            batch = ids[start:start + EXPORT_BATCH]
            with self._calling(f"exporting {len(batch)} tasks of project {project_id}",
                               self._missing_project(project_id)):
                # The SDK sends 'ids'; the server reads 'ids[]' (data_export/api.py).
                chunks = self._sdk.projects.exports.download_sync(
                    id=int(project_id), export_type="JSON", download_all_tasks=True,
                    request_options={"additional_query_parameters": {"ids[]": batch}})
                doc = json.loads(b"".join(chunks))
            if not isinstance(doc, list):
                raise LabelStudioError(f"Label Studio at {self.url} exported project "
                                       f"{project_id} as something other than a task list")
            out.extend(t for t in doc if isinstance(t, dict) and t.get("id") in set(batch))
        out.sort(key=lambda t: t["id"])
        return out


def _task_key(task: dict[str, Any]) -> tuple[str, int]:
    data = task.get("data") or {}
    key, round_ = data.get(KEY_FIELD), data.get(ROUND_FIELD)
    if not isinstance(key, str) or not isinstance(round_, int):
        raise ValueError(f"a task to push lacks data.{KEY_FIELD} or data.{ROUND_FIELD}")
    return key, round_


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _detail(body: Any) -> str:
    """Label Studio's own words from an error body: detail plus validation errors."""
    if isinstance(body, dict):
        parts = []
        if body.get("detail"):
            parts.append(str(body["detail"]))
        errors = body.get("validation_errors")
        if isinstance(errors, dict):
            for name, msgs in errors.items():
                msgs = msgs if isinstance(msgs, list) else [msgs]
                parts.append(f"{name}: {' '.join(map(str, msgs))}")
        if not parts and not body.get("detail"):
            parts.append(json.dumps(body)[:200])
        return _one_line("; ".join(parts))
    if isinstance(body, str):
        return "not JSON" if body.lstrip().startswith("<") else _one_line(body)
    return "" if body is None else _one_line(str(body))

